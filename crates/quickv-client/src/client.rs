//! [`Client`]: one server or a primary/backup pair, its calls, its deadlines, and the reads a
//! pair client may take from the backup. The connections are in `link.rs`, the streams in
//! `pipe.rs`, batches in `batch.rs`, retried writes in `retry.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use quickv_proto::{Op, Reply};

use crate::config::{ClientConfig, ReadFrom, Source};
use crate::error::{client_tls, expect_ok, get_answer, parse_status, refusal, ClientError};
use crate::link::{jitter_seed, Link, Started};
use crate::owed::Deadline;
use crate::pipe::Call;
use quickv_proto::status::Status;

/// Longest [`Client::close`] waits for the close to reach the server.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// How long a pair client trusts the backup's `current` flag before asking again.
const BACKUP_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The answer of [`Client::read`]: the value (`None` if the key is absent) and which server gave
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value, or `None` if the key is absent there.
    pub value: Option<Bytes>,
    /// The server that answered; [`Source::Backup`] only with [`ReadFrom::BackupIfPrimaryDown`]
    /// while the primary could not be reached, or with [`ReadFrom::Any`].
    pub from: Source,
}

/// A connection to one quickv server, or to a primary/backup pair. Clone it freely; clones share
/// the connections.
///
/// If a connection is lost (server restarted, network cut), calls in flight fail — writes as
/// [`ClientError::Indeterminate`], since they may have been applied — and the next call dials
/// again by itself, waiting between failed dials with a bounded exponential backoff with jitter
/// ([`ClientConfig::backoff_min`]). A call is retried on a new connection only if it was never
/// sent.
///
/// Every call has a deadline ([`ClientConfig::timeout`], or [`Client::with_timeout`]), and
/// dropping a call's future cancels it: its slot is released at once and its late answer, if one
/// comes, is discarded without disturbing other calls.
#[derive(Clone, Debug)]
pub struct Client {
    /// What every clone shares: the links and the client-wide state.
    pub(crate) inner: Arc<Inner>,
    /// Deadline of each call made through this handle.
    timeout: Option<Duration>,
}

/// The part of a [`Client`] its clones share.
#[derive(Debug)]
pub(crate) struct Inner {
    /// Where writes and linearizable reads go.
    pub(crate) primary: Link,
    /// The pair's backup, for [`Client::read`] with [`ReadFrom::BackupIfPrimaryDown`] or
    /// [`ReadFrom::Any`].
    pub(crate) backup: Option<Link>,
    /// Streams, limits and timeouts.
    pub(crate) config: ClientConfig,
    /// Set by [`Client::close`]: no more reconnecting.
    pub(crate) closed: AtomicBool,
    /// When the backup last reported its store current (pair clients).
    pub(crate) backup_current_at: Mutex<Option<std::time::Instant>>,
    /// A background dial of the primary is under way (pair clients reading from the backup).
    pub(crate) primary_redialing: AtomicBool,
    /// Reads made with [`ReadFrom::Any`]: its parity picks the server a read tries first.
    pub(crate) next_read: AtomicU64,
    /// This client's session id: random, stamped on every write with [`Inner::next_seq`] so a
    /// retried write is recognised by the server.
    pub(crate) session_id: u64,
    /// The last write sequence number handed out (the first write gets 1).
    pub(crate) next_seq: AtomicU64,
    /// Write attempts after the first (see [`Client::write_retries`]).
    pub(crate) write_retries: AtomicU64,
}

impl Client {
    /// Connects, authenticates with the client certificate, and exchanges the protocol hello.
    ///
    /// Succeeds only after the server answered the hello, so a refused certificate (which TLS 1.3
    /// reports only on first use) is an error here, in plain words.
    pub async fn connect(addr: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        let client_cfg = client_tls(config)?;
        Client::connect_with(addr, client_cfg, config).await
    }

    /// Connects with an explicit quinn client config (used to test refusals of bad certificates).
    pub async fn connect_with(
        addr: &str,
        client_cfg: quinn::ClientConfig,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        let primary = Link::new(addr, client_cfg).await?;
        let client = Client::assemble(primary, None, config);
        client
            .inner
            .primary
            .connection(&client.inner.config, &client.inner.closed)
            .await?;
        Ok(client)
    }

    /// Connects to a primary/backup pair. Writes, [`Client::get`], the batch calls and
    /// [`Client::status`] go to the primary; [`Client::read`] may go to the backup while the
    /// primary cannot be reached, if `config.read_from` is [`ReadFrom::BackupIfPrimaryDown`].
    ///
    /// Fails if a server answers with the wrong role (the addresses swapped), or if the primary
    /// cannot be reached — unless backup reads are allowed and the backup can be reached: then
    /// the client starts on the backup for reads and keeps dialling the primary (with backoff).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let certs_dir = std::path::Path::new("certs");
    /// # let (addr, primary_addr, backup_addr) = ("127.0.0.1:4470", "127.0.0.1:4470", "127.0.0.1:4471");
    /// use quickv_client::{Client, ClientConfig, ReadFrom, Source};
    ///
    /// let cfg = ClientConfig::builder(certs_dir)
    ///     .read_from(ReadFrom::BackupIfPrimaryDown)
    ///     .build();
    /// let client = Client::connect_pair(&primary_addr, &backup_addr, &cfg).await?;
    /// # while client.status().await?.state != "sync" {
    /// #     tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    /// # }
    /// client.insert("k", "v").await?;
    /// let read = client.read("k").await?;
    /// assert_eq!(read.value.as_deref(), Some(&b"v"[..]));
    /// assert_eq!(read.from, Source::Primary); // the primary is up
    /// # Ok(()) }
    /// ```
    pub async fn connect_pair(
        primary: &str,
        backup: &str,
        config: &ClientConfig,
    ) -> Result<Client, ClientError> {
        let client_cfg = client_tls(config)?;
        let primary_link = Link::new(primary, client_cfg.clone()).await?;
        let backup_link = Link::new(backup, client_cfg).await?;
        let client = Client::assemble(primary_link, Some(backup_link), config);
        let inner = &client.inner;
        let Some(backup_link) = inner.backup.as_ref() else {
            return Err(ClientError::Connection("no backup link".into()));
        };
        let (p, b) = tokio::join!(
            inner.primary.connection(&inner.config, &inner.closed),
            backup_link.connection(&inner.config, &inner.closed)
        );
        let wrong_role = |addr: &str, link: &Link, want: &str| {
            let role = link.role();
            (role != want).then(|| {
                ClientError::Connection(format!(
                    "{addr} says it is a {role} server, not the pair's {want}: check the order of \
                     the two addresses"
                ))
            })
        };
        match p {
            Ok(_) => {
                if let Some(err) = wrong_role(primary, &inner.primary, "primary") {
                    return Err(err);
                }
            }
            // Reads that may go to the backup start there while the primary is down.
            Err(err) if config.read_from == ReadFrom::Primary || b.is_err() => return Err(err),
            Err(_) => {}
        }
        if b.is_ok() {
            if let Some(err) = wrong_role(backup, backup_link, "backup") {
                return Err(err);
            }
        }
        Ok(client)
    }

    fn assemble(primary: Link, backup: Option<Link>, config: &ClientConfig) -> Client {
        Client {
            inner: Arc::new(Inner {
                primary,
                backup,
                config: config.clone(),
                closed: AtomicBool::new(false),
                backup_current_at: Mutex::new(None),
                primary_redialing: AtomicBool::new(false),
                next_read: AtomicU64::new(0),
                session_id: jitter_seed() ^ u64::from(std::process::id()).rotate_left(32),
                next_seq: AtomicU64::new(0),
                write_retries: AtomicU64::new(0),
            }),
            timeout: config.timeout,
        }
    }

    /// A handle on the same connections whose calls have deadline `timeout` instead of
    /// [`ClientConfig::timeout`].
    ///
    /// ```no_run
    /// # async fn f(client: quickv_client::Client) -> Result<(), quickv_client::ClientError> {
    /// use std::time::Duration;
    /// let value = client.with_timeout(Duration::from_millis(50)).get("k").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout: Some(timeout),
        }
    }

    /// A handle on the same connections whose calls have no deadline.
    pub fn without_timeout(&self) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout: None,
        }
    }

    /// The deadline of each call made through this handle.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The (primary) server's hello line, e.g. `quickv 0.1.0 role=primary`; empty if it was never
    /// reached.
    pub fn server_info(&self) -> String {
        self.inner
            .primary
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Calls written and still awaited by their callers, over every connection of this client.
    /// A call whose future was dropped no longer counts, even before its late answer arrives.
    pub fn in_flight(&self) -> usize {
        let links = std::iter::once(&self.inner.primary).chain(self.inner.backup.as_ref());
        links.filter_map(Link::current).map(|s| s.in_flight()).sum()
    }

    /// Sends one request to the primary and waits for its answer, within the deadline. A dump's
    /// chunks are merged into a single `DumpChunk { last: true }`. Errors here are transport
    /// errors and [`ClientError::Timeout`]; the reply is raw (a write past its deadline, or cut
    /// off by a lost connection, is `Reply::Indeterminate`).
    pub async fn call(&self, op: Op) -> Result<Reply, ClientError> {
        self.call_on(&self.inner.primary, op).await
    }

    async fn call_on(&self, link: &Link, op: Op) -> Result<Reply, ClientError> {
        let is_write = op.is_write();
        if is_write && self.inner.config.retry_writes && std::ptr::eq(link, &self.inner.primary) {
            // Boxed: the retry loop's state (its backoff timer among it) is far larger than a
            // plain call's, and every call's future would carry it.
            return Box::pin(self.write_with_retries(op)).await;
        }
        // No timer per call: the deadline travels with the call, and the pipe's sweeper
        // completes it once past (see `owed`).
        let due = self.timeout.and_then(Deadline::after);
        let (config, closed) = (&self.inner.config, &self.inner.closed);
        // This task's waker goes into the call's slot as it is queued, and the `Pending` is
        // awaited within the same poll (nothing below suspends before it), so its first poll
        // needs no look at the slot (`Pending`'s `primed`).
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        // The usual case queues synchronously; waiting for room or a connection is boxed, so
        // that a call's future holds little more than its `Pending`.
        let pending = match link.try_start(Call { op, session: None }, closed, due, Some(waker)) {
            Started::Now(started) => started?,
            Started::Stalled(stalled) => {
                Box::pin(link.start_slow(stalled, config, closed, due)).await?
            }
        };
        pending.await
    }

    /// Write attempts this client resent with their session stamp because the first attempt's
    /// fate was unknown (shared by clones); a figure for logs and tests.
    pub fn write_retries(&self) -> u64 {
        self.inner.write_retries.load(Ordering::Relaxed)
    }

    /// This client's session id, stamped on every write (see [`ClientConfig::retry_writes`]).
    pub fn session_id(&self) -> u64 {
        self.inner.session_id
    }

    /// Inserts a new key; fails with [`ClientError::Exists`] if it is present.
    pub async fn insert(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let op = Op::Insert {
            key: key.into(),
            value: value.into(),
        };
        expect_ok(self.call(op).await?)
    }

    /// Replaces the value of an existing key; fails with [`ClientError::NotFound`] if absent.
    pub async fn update(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let op = Op::Update {
            key: key.into(),
            value: value.into(),
        };
        expect_ok(self.call(op).await?)
    }

    /// Deletes a key and returns its old value; fails with [`ClientError::NotFound`] if absent.
    ///
    /// With [`retry_writes`](crate::ClientConfigBuilder::retry_writes), a retry that finds the
    /// delete already applied by an earlier attempt gets the removed value only if it was small
    /// (1 KiB by default); for a larger one this returns [`ClientError::DeletedValueNotKept`],
    /// which means the delete **took effect** ([`ClientError::took_effect`]).
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        match self.call(Op::Delete { key: key.into() }).await? {
            Reply::Value(v) => Ok(v),
            // A retry that found the delete applied, its (large) value not kept.
            Reply::Ok => Err(ClientError::DeletedValueNotKept),
            other => Err(refusal(other)),
        }
    }

    /// Reads a key from the primary (linearizable); `None` if absent. Never goes to the backup:
    /// see [`Client::read`] for that.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        get_answer(self.call(Op::Get { key: key.into() }).await?)
    }

    /// Reads a key and says which server answered. Like [`Client::get`], except that on a pair
    /// client with [`ReadFrom::BackupIfPrimaryDown`] the read goes to the backup while the
    /// primary cannot be reached (no live connection, or the connection failed during this
    /// read) and the backup reports its store current; then `from` is [`Source::Backup`]. The
    /// primary is redialled in the background meanwhile. With [`ReadFrom::Primary`] (the
    /// default) this never reads from the backup.
    ///
    /// With [`ReadFrom::Any`] reads take turns between the two servers; a read refused
    /// (`unavailable`) or cut off at one goes to the other, and `from` names the one that
    /// answered. The error of the second attempt is returned if both fail.
    pub async fn read(&self, key: impl Into<Bytes>) -> Result<Read, ClientError> {
        let key = key.into();
        let inner = &self.inner;
        let backup = match (&inner.backup, inner.config.read_from) {
            (Some(b), ReadFrom::BackupIfPrimaryDown) => b,
            (Some(b), ReadFrom::Any) => return self.read_any(b, key).await,
            _ => {
                let value = self.get(key).await?;
                return Ok(Read {
                    value,
                    from: Source::Primary,
                });
            }
        };
        let why = match inner.primary.current() {
            Some(s) if !s.dead() => match self.call(Op::Get { key: key.clone() }).await {
                Err(ClientError::Connection(why)) => why,
                outcome => {
                    return Ok(Read {
                        value: get_answer(outcome?)?,
                        from: Source::Primary,
                    })
                }
            },
            _ => "no connection to the primary".to_string(),
        };
        self.redial_primary_in_background();
        self.check_backup_current(backup, &why).await?;
        let value = get_answer(self.call_on(backup, Op::Get { key }).await?)?;
        Ok(Read {
            value,
            from: Source::Backup,
        })
    }

    /// [`ReadFrom::Any`]: this read's turn names the first server; a refusal or a lost
    /// connection there sends the read to the other one. A primary without a live connection is
    /// skipped (and redialled in the background) as with [`ReadFrom::BackupIfPrimaryDown`], so a
    /// dead primary costs no dial per read.
    async fn read_any(&self, backup: &Link, key: Bytes) -> Result<Read, ClientError> {
        let inner = &self.inner;
        let primary_live = inner.primary.current().is_some_and(|s| !s.dead());
        if !primary_live {
            self.redial_primary_in_background();
        }
        let backup_first =
            !primary_live || inner.next_read.fetch_add(1, Ordering::Relaxed) % 2 == 1;
        let order = match backup_first {
            true => [(backup, Source::Backup), (&inner.primary, Source::Primary)],
            false => [(&inner.primary, Source::Primary), (backup, Source::Backup)],
        };
        let mut last = None;
        for (link, from) in order {
            let outcome = match self.call_on(link, Op::Get { key: key.clone() }).await {
                Ok(reply) => get_answer(reply),
                Err(err) => Err(err),
            };
            match outcome {
                Ok(value) => return Ok(Read { value, from }),
                Err(err @ (ClientError::Unavailable(_) | ClientError::Connection(_))) => {
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Connection("no server was tried".into())))
    }

    /// Starts one background dial of the primary, unless one is under way (the dial itself
    /// honours the backoff).
    fn redial_primary_in_background(&self) {
        if self.inner.primary_redialing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _ = inner.primary.connection(&inner.config, &inner.closed).await;
            inner.primary_redialing.store(false, Ordering::Release);
        });
    }

    /// Reads from the backup are allowed only while it reports its store current; the answer is
    /// trusted for a second.
    async fn check_backup_current(&self, backup: &Link, why: &str) -> Result<(), ClientError> {
        let fresh = self
            .inner
            .backup_current_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < BACKUP_CHECK_EVERY);
        if fresh {
            return Ok(());
        }
        let status = match self.call_on(backup, Op::Status).await {
            Ok(Reply::Status(text)) => parse_status(&text)?,
            Ok(other) => return Err(refusal(other)),
            Err(err) => {
                return Err(ClientError::Connection(format!(
                    "neither server can be reached: the primary: {why}; the backup: {err}"
                )))
            }
        };
        if status.current() != Some(true) {
            return Err(ClientError::Unavailable(format!(
                "the primary cannot be reached ({why}) and the backup's store is not known \
                 current (state {})",
                status.state
            )));
        }
        *self
            .inner
            .backup_current_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        Ok(())
    }

    /// Number of keys on the server.
    pub async fn count(&self) -> Result<u64, ClientError> {
        match self.call(Op::Count).await? {
            Reply::Count(n) => Ok(n),
            other => Err(refusal(other)),
        }
    }

    /// Every pair on the server, sorted by key.
    pub async fn dump(&self) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        match self.call(Op::Dump).await? {
            Reply::DumpChunk { mut entries, .. } => {
                entries.sort();
                Ok(entries)
            }
            other => Err(refusal(other)),
        }
    }

    /// The (primary) server's status document, typed; see [`Status`] (docs/operations.md lists
    /// every field). Fields this client version does not know are skipped; [`Client::status_json`]
    /// has the document as sent.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let certs_dir = std::path::Path::new("certs");
    /// # let addr = "127.0.0.1:4470";
    /// use quickv_client::{Client, ClientConfig};
    ///
    /// let client = Client::connect(&addr, &ClientConfig::new(certs_dir)).await?;
    /// client.insert("a", "1").await?;
    /// let status = client.status().await?;
    /// assert_eq!(status.role, "standalone");
    /// assert_eq!(status.keys, 1);
    /// assert!(status.replication.is_none()); // no replication on a standalone server
    /// assert_eq!(status.current(), None);
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.call(Op::Status).await? {
            Reply::Status(text) => parse_status(&text),
            other => Err(refusal(other)),
        }
    }

    /// The backup's status document, on a pair client (`None` on a single-server client): its
    /// role, replication state and whether its store is current — what [`Client::read`] checks
    /// before reading there.
    pub async fn backup_status(&self) -> Result<Option<Status>, ClientError> {
        let Some(backup) = &self.inner.backup else {
            return Ok(None);
        };
        match self.call_on(backup, Op::Status).await? {
            Reply::Status(text) => parse_status(&text).map(Some),
            other => Err(refusal(other)),
        }
    }

    /// The (primary) server's status document as sent (JSON), e.g. to print it whole, fields
    /// this client version does not know included.
    pub async fn status_json(&self) -> Result<serde_json::Value, ClientError> {
        match self.call(Op::Status).await? {
            Reply::Status(text) => serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("status is not JSON: {e}"))),
            other => Err(refusal(other)),
        }
    }

    /// Round trip with an echoed payload.
    pub async fn ping(&self, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        match self.call(Op::Ping(payload.into())).await? {
            Reply::Value(v) => Ok(v),
            other => Err(refusal(other)),
        }
    }

    /// Asks the server to stop gracefully.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        expect_ok(self.call(Op::Shutdown).await?)
    }

    /// Closes the connections now (calls in flight fail) and waits briefly until the servers
    /// have been told, so a short-lived process does not leave a half-open connection behind.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let links = std::iter::once(&self.inner.primary).chain(self.inner.backup.as_ref());
        for link in links {
            if let Some(connection) = link.current() {
                connection.conn.close(0u32.into(), b"client closed");
            }
            let _ = tokio::time::timeout(CLOSE_WAIT, link.endpoint.wait_idle()).await;
        }
    }
}
