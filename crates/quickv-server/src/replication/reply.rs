//! Where a replicated write's answer goes once the backup has acknowledged it.
//!
//! A write the primary sends to the backup is answered later, by whoever applies the backup's ack
//! (`primary::read_acks` → [`Lanes::handle_ack`](super::lanes::Lanes::handle_ack)). The queued
//! write carries its [`ReplyTo`], so that task answers the client itself:
//!
//! - [`ReplyTo::Stream`]: a client stream's answer sink (the session encodes the answer straight
//!   into the stream's outbox and wakes its writer) plus the request's [`Ticket`]. No channel, no
//!   wake-up of the session task per write: the fast path of every QUIC client.
//! - [`ReplyTo::Oneshot`]: a channel whose receiver someone awaits (the HTTP gateway, the
//!   simulator, unit tests): what [`Submitted`] hands out.
//!
//! A [`Waiter`] holds one of them and is answered exactly once: [`Waiter::send`] consumes it, and
//! one dropped unanswered (a bug, or a lane reset that forgot it) answers `indeterminate` — for a
//! oneshot by dropping its sender, which its receiver reads as "fate unknown".

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::replication::Submitted;
use quickv_proto::{OpKind, Reply};

/// A client stream that takes answers to its replicated writes from another task.
pub trait StreamAnswers: Send + Sync + std::fmt::Debug {
    /// Delivers `reply` to the request `ticket` names; `now` is when the answer became known
    /// (read once per batch of acks, not per write). Called once per ticket, possibly with a
    /// lane's lock held: it must not block or call back into the replication.
    fn answer(&self, ticket: Ticket, reply: Reply, now: Instant);
}

/// What a stream needs to deliver one answer: the request it answers, and what its metrics record.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// The request id the answer carries.
    pub id: u64,
    /// The operation, for the metrics.
    pub kind: OpKind,
    /// When the request was routed, for the latency metrics.
    pub started: Instant,
}

/// Where one queued write's answer goes.
#[derive(Debug)]
pub enum ReplyTo {
    /// A channel; a dropped sender reads as "fate unknown" (`indeterminate`).
    Oneshot(oneshot::Sender<Reply>),
    /// A client stream's answer sink and the request to answer there.
    Stream(Arc<dyn StreamAnswers>, Ticket),
}

/// A [`ReplyTo`] that is answered exactly once: by [`Waiter::send`], or `indeterminate` on drop.
#[derive(Debug)]
pub struct Waiter(Option<ReplyTo>);

/// The answer of a write whose waiter was dropped unanswered.
const LOST: &str = "the server lost track of this write";

impl Waiter {
    /// Waits at `to`.
    pub fn new(to: ReplyTo) -> Waiter {
        Waiter(Some(to))
    }

    /// Delivers the answer, known since `now`.
    pub fn send(mut self, reply: Reply, now: Instant) {
        if let Some(to) = self.0.take() {
            deliver(to, reply, now);
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        match self.0.take() {
            // Dropping the sender is the oneshot's way to say "fate unknown".
            Some(ReplyTo::Oneshot(_)) | None => {}
            Some(to) => deliver(to, Reply::Indeterminate(LOST.into()), Instant::now()),
        }
    }
}

/// Runs `submit` with a oneshot channel as the place to answer a write that waits for its ack:
/// the [`Submitted`] form of a submission (`submit` returns `Some(answer)` when answered now).
pub fn via_oneshot(submit: impl FnOnce(&mut dyn FnMut() -> ReplyTo) -> Option<Reply>) -> Submitted {
    let mut rx = None;
    let mut waiting = || {
        let (tx, receiver) = oneshot::channel();
        rx = Some(receiver);
        ReplyTo::Oneshot(tx)
    };
    match submit(&mut waiting) {
        Some(now) => Err(now),
        // A submission that queued its write made its waiter first, so `rx` is set; were it not,
        // the fate of the write would be unknown.
        None => rx.ok_or_else(|| Reply::Indeterminate(LOST.into())),
    }
}

fn deliver(to: ReplyTo, reply: Reply, now: Instant) {
    match to {
        // The receiver may be gone (an HTTP client hung up): nobody is left to answer.
        ReplyTo::Oneshot(tx) => {
            let _ = tx.send(reply);
        }
        ReplyTo::Stream(stream, ticket) => stream.answer(ticket, reply, now),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<(u64, Reply)>>);

    impl StreamAnswers for Recorded {
        fn answer(&self, ticket: Ticket, reply: Reply, _now: Instant) {
            self.0
                .lock()
                .expect("not poisoned")
                .push((ticket.id, reply));
        }
    }

    fn ticket(id: u64) -> Ticket {
        Ticket {
            id,
            kind: OpKind::Insert,
            started: Instant::now(),
        }
    }

    #[test]
    fn a_stream_waiter_is_answered_once_and_a_dropped_one_indeterminate() {
        let stream = Arc::new(Recorded::default());
        Waiter::new(ReplyTo::Stream(stream.clone(), ticket(1))).send(Reply::Ok, Instant::now());
        drop(Waiter::new(ReplyTo::Stream(stream.clone(), ticket(2))));
        let got = stream.0.lock().expect("not poisoned").clone();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], (1, Reply::Ok));
        assert!(matches!(&got[1], (2, Reply::Indeterminate(_))), "{got:?}");
    }

    #[test]
    fn a_dropped_oneshot_waiter_reads_as_fate_unknown() {
        let (tx, mut rx) = oneshot::channel();
        drop(Waiter::new(ReplyTo::Oneshot(tx)));
        assert!(rx.try_recv().is_err());
        let (tx, mut rx) = oneshot::channel();
        Waiter::new(ReplyTo::Oneshot(tx)).send(Reply::Exists, Instant::now());
        assert_eq!(rx.try_recv().expect("answered"), Reply::Exists);
    }
}
