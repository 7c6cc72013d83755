//! The recorder: a shared, append-only log of operations with monotonic times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientId, History, Kind, Mark, MarkKind, Observed, Operation, Server};
use quickv_client::{Client, Read};

/// Records operations from any number of tasks. Cheap to clone; clones share the log.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Time zero of the history; every recorded time is an offset from it (monotonic clock, so
    /// wall-clock steps cannot reorder events).
    epoch: Instant,
    /// Completed operations, in completion order.
    ops: Mutex<Vec<Operation>>,
    /// Faults and resets.
    marks: Mutex<Vec<Mark>>,
    /// Source of unique write values.
    next_value: AtomicU64,
    /// Writes invoked so far (answered or not).
    invoked: AtomicU64,
    /// Operations invoked and not yet finished: a test can tell that every client is waiting.
    in_flight: AtomicU64,
    /// Writes with a definite answer so far: tests wait on it to know load is flowing.
    acknowledged: AtomicU64,
    /// Writes answered `unavailable` so far.
    refused: AtomicU64,
    /// Writes that ended indeterminate so far.
    indeterminate: AtomicU64,
    /// Operations without an answer so far (unsent writes, failed reads): a client cut off from
    /// the server shows here.
    failed: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Recorder {
        Recorder {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                ops: Mutex::new(Vec::new()),
                marks: Mutex::new(Vec::new()),
                next_value: AtomicU64::new(1),
                invoked: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                acknowledged: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                indeterminate: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        }
    }

    /// Time since the history started.
    pub fn now(&self) -> Duration {
        self.inner.epoch.elapsed()
    }

    /// A value no other write of this recorder uses (`c<client>.<n>`): a value seen in a read or a
    /// dump then names exactly one write.
    pub fn unique_value(&self, client: ClientId) -> Bytes {
        let n = self.inner.next_value.fetch_add(1, Ordering::Relaxed);
        Bytes::from(format!("c{client}.{n}"))
    }

    /// Notes the invoke of an operation; finish it with [`Invocation::finish`]. If the returned
    /// guard is dropped unfinished (the task was cancelled mid-call), the operation is recorded as
    /// indeterminate (a write that may still arrive) or failed (a read), never forgotten.
    pub fn begin(&self, client: ClientId, key: Bytes, kind: Kind) -> Invocation {
        if kind.is_write() {
            self.inner.invoked.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        Invocation {
            recorder: self.clone(),
            op: Some((client, key, kind, self.now())),
        }
    }

    /// Runs one operation on `conn` and records it.
    pub async fn call(&self, client: ClientId, conn: &Client, key: Bytes, kind: Kind) -> Observed {
        let op = kind.op(key.clone());
        let invocation = self.begin(client, key, kind.clone());
        let result = conn.call(op).await;
        let outcome = Observed::from_call(&kind, result);
        invocation.finish(outcome.clone());
        outcome
    }

    /// Runs one operation on `conn`, a connection to `server`, and records which server answered.
    pub async fn call_at(
        &self,
        client: ClientId,
        conn: &Client,
        server: Server,
        key: Bytes,
        kind: Kind,
    ) -> Observed {
        let op = kind.op(key.clone());
        let invocation = self.begin(client, key, kind.clone());
        let result = conn.call(op).await;
        let outcome = Observed::from_call(&kind, result);
        invocation.finish_at(outcome.clone(), Some(server));
        outcome
    }

    /// Reads `key` with [`Client::read`] — on a pair client with
    /// [`ReadFrom::Any`](quickv_client::ReadFrom::Any), from either server — and records which
    /// server answered (nothing for a read that got no answer).
    pub async fn read(&self, client: ClientId, conn: &Client, key: Bytes) -> Observed {
        let invocation = self.begin(client, key.clone(), Kind::Get);
        let (outcome, server) = match conn.read(key).await {
            Ok(Read { value, from }) => (
                value.map_or(Observed::NotFound, Observed::Value),
                Some(Server::from(from)),
            ),
            Err(err) => (Observed::from_call(&Kind::Get, Err(err)), None),
        };
        invocation.finish_at(outcome.clone(), server);
        outcome
    }

    /// Marks a fault injected now.
    pub fn mark_fault(&self, label: impl Into<String>) {
        self.mark(MarkKind::Fault, label.into());
    }

    /// Marks a deliberate loss of all data now (both servers killed).
    pub fn mark_reset(&self, label: impl Into<String>) {
        self.mark(MarkKind::Reset, label.into());
    }

    fn mark(&self, kind: MarkKind, label: String) {
        let at = self.now();
        lock(&self.inner.marks).push(Mark { at, kind, label });
    }

    /// Operations invoked and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Writes invoked so far, answered or not.
    pub fn invoked_writes(&self) -> u64 {
        self.inner.invoked.load(Ordering::Relaxed)
    }

    /// Writes that got a definite answer so far.
    pub fn acknowledged_writes(&self) -> u64 {
        self.inner.acknowledged.load(Ordering::Relaxed)
    }

    /// Writes answered `unavailable` so far.
    pub fn refused_writes(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Writes that ended indeterminate so far.
    pub fn indeterminate_writes(&self) -> u64 {
        self.inner.indeterminate.load(Ordering::Relaxed)
    }

    /// Operations that got no answer so far (writes never sent, reads that failed).
    pub fn failed_operations(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// A copy of everything recorded so far.
    pub fn history(&self) -> History {
        History {
            ops: lock(&self.inner.ops).clone(),
            marks: lock(&self.inner.marks).clone(),
        }
    }

    fn record(&self, op: Operation) {
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        if matches!(op.outcome, Observed::Failed(_)) {
            self.inner.failed.fetch_add(1, Ordering::Relaxed);
        }
        if op.kind.is_write() {
            let counter = match op.outcome {
                Observed::Refused(_) => Some(&self.inner.refused),
                Observed::Indeterminate(_) => Some(&self.inner.indeterminate),
                ref o if o.is_definite() => Some(&self.inner.acknowledged),
                _ => None,
            };
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        lock(&self.inner.ops).push(op);
    }
}

/// A poisoned log (a panic while pushing) still holds every complete entry; keep it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An operation invoked and not yet finished.
#[derive(Debug)]
pub struct Invocation {
    recorder: Recorder,
    /// Client, key, kind, invoke time; taken when finished.
    op: Option<(ClientId, Bytes, Kind, Duration)>,
}

impl Invocation {
    /// Records the outcome, with the completion time now.
    pub fn finish(mut self, outcome: Observed) {
        self.complete(outcome, None);
    }

    /// Records the outcome and the server that gave it, with the completion time now.
    pub fn finish_at(mut self, outcome: Observed, server: Option<Server>) {
        self.complete(outcome, server);
    }

    fn complete(&mut self, outcome: Observed, server: Option<Server>) {
        if let Some((client, key, kind, invoke)) = self.op.take() {
            let complete = self.recorder.now();
            self.recorder.record(Operation {
                client,
                key,
                kind,
                invoke,
                complete,
                outcome,
                server,
            });
        }
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        let write = self.op.as_ref().is_some_and(|(_, _, k, _)| k.is_write());
        let why = "abandoned before an answer came".to_string();
        let outcome = match write {
            true => Observed::Indeterminate(why),
            false => Observed::Failed(why),
        };
        self.complete(outcome, None);
    }
}
