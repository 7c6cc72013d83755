//! Many requests in flight at once: [`Client::get_many`], [`Client::insert_many`] and
//! [`Pipeline`].

use bytes::Bytes;

use crate::client::Client;
use crate::error::{expect_ok, get_answer, ClientError};
use crate::owed::past_deadline;
use crate::pipe::Pending;
use quickv_proto::{Op, Reply};

impl Client {
    /// Reads many keys from the primary at once: every request is queued before the first
    /// answer is awaited, so they travel pipelined over the client's streams. One result per
    /// key, in the order given; one key's failure does not fail the others. The whole batch has
    /// one deadline ([`Client::timeout`]).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let certs_dir = std::path::Path::new("certs");
    /// # let (addr, primary_addr, backup_addr) = ("127.0.0.1:4470", "127.0.0.1:4470", "127.0.0.1:4471");
    /// use quickv_client::{Client, ClientConfig, ClientError};
    ///
    /// let client = Client::connect(&addr, &ClientConfig::new(certs_dir)).await?;
    /// let inserted = client.insert_many([("a", "1"), ("b", "2"), ("a", "3")]).await;
    /// assert_eq!(inserted, vec![Ok(()), Ok(()), Err(ClientError::Exists)]);
    /// let values = client.get_many(["a", "nope", "b"]).await;
    /// assert_eq!(values[0].as_ref().ok().cloned().flatten().as_deref(), Some(&b"1"[..]));
    /// assert_eq!(values[1], Ok(None));
    /// assert_eq!(values[2].as_ref().ok().cloned().flatten().as_deref(), Some(&b"2"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get_many<K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Vec<Result<Option<Bytes>, ClientError>> {
        let ops = keys.into_iter().map(|k| Op::Get { key: k.into() });
        self.call_many(ops.collect())
            .await
            .into_iter()
            .map(|r| r.and_then(get_answer))
            .collect()
    }

    /// Inserts many pairs at once (pipelined like [`Client::get_many`]). One result per pair, in
    /// the order given. The writes are independent: they may be applied in any order, and some
    /// may succeed while others fail (an [`ClientError::Indeterminate`] item may or may not have
    /// been applied).
    pub async fn insert_many<K: Into<Bytes>, V: Into<Bytes>>(
        &self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Vec<Result<(), ClientError>> {
        let ops = pairs.into_iter().map(|(k, v)| Op::Insert {
            key: k.into(),
            value: v.into(),
        });
        self.call_many(ops.collect())
            .await
            .into_iter()
            .map(|r| r.and_then(expect_ok))
            .collect()
    }

    /// An empty [`Pipeline`] on this client.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            client: self.clone(),
            ops: Vec::new(),
        }
    }

    /// Queues every op, then collects the answers in order, all within one deadline.
    pub(crate) async fn call_many(&self, ops: Vec<Op>) -> Vec<Result<Reply, ClientError>> {
        let kinds: Vec<bool> = ops.iter().map(Op::is_write).collect();
        let mut results: Vec<Option<Result<Reply, ClientError>>> = vec![None; ops.len()];
        let work = async {
            let mut pending: Vec<(usize, Pending)> = Vec::with_capacity(ops.len());
            for (i, op) in ops.into_iter().enumerate() {
                match self
                    .inner
                    .primary
                    .start(op, None, &self.inner.config, &self.inner.closed, None)
                    .await
                {
                    Ok(p) => pending.push((i, p)),
                    Err(err) => results[i] = Some(Err(err)),
                }
            }
            for (i, p) in pending {
                let answer = p.await;
                results[i] = Some(answer);
            }
        };
        let timed_out = match self.timeout() {
            None => {
                work.await;
                None
            }
            Some(deadline) => tokio::time::timeout(deadline, work)
                .await
                .err()
                .map(|_| deadline),
        };
        // Calls still unanswered were cancelled when `work` was dropped.
        results
            .into_iter()
            .zip(kinds)
            .map(|(r, is_write)| match (r, timed_out) {
                (Some(r), _) => r,
                (None, Some(deadline)) => past_deadline(is_write, deadline),
                (None, None) => Err(ClientError::Connection("the call was not made".into())),
            })
            .collect()
    }
}

/// A batch of mixed requests sent together; see [`Client::pipeline`]. Each request is
/// independent (no transaction): they are all put in flight at once and may be applied in any
/// order; [`Pipeline::run`] returns one raw [`Reply`] per request, in the order added.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let certs_dir = std::path::Path::new("certs");
/// # let (addr, primary_addr, backup_addr) = ("127.0.0.1:4470", "127.0.0.1:4470", "127.0.0.1:4471");
/// use quickv_client::{Client, ClientConfig};
/// use quickv_client::protocol::Reply;
///
/// let client = Client::connect(&addr, &ClientConfig::new(certs_dir)).await?;
/// client.insert("x", "old").await?;
/// let replies = client.pipeline().update("x", "new").insert("x", "again").get("y").run().await;
/// assert_eq!(replies[0], Ok(Reply::Ok));
/// assert_eq!(replies[1], Ok(Reply::Exists));
/// assert_eq!(replies[2], Ok(Reply::NotFound));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a pipeline does nothing until run"]
pub struct Pipeline {
    client: Client,
    ops: Vec<Op>,
}

impl Pipeline {
    /// Adds an insert.
    pub fn insert(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Insert {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds an update.
    pub fn update(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Update {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    /// Adds a read (from the primary).
    pub fn get(mut self, key: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Get { key: key.into() });
        self
    }

    /// Adds any request.
    pub fn op(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Requests added so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Sends every request and returns one answer per request, in the order added: the raw
    /// [`Reply`] (`Ok`, `Value`, `NotFound`, `Exists`, `Unavailable`, `Indeterminate`, …) or a
    /// transport error / [`ClientError::Timeout`] for that item. Writes cut off by the deadline
    /// or a lost connection are `Reply::Indeterminate`.
    pub async fn run(self) -> Vec<Result<Reply, ClientError>> {
        self.client.call_many(self.ops).await
    }
}
