//! Where a replicated write's answer goes once the backup has acknowledged it.
//!
//! A write the primary sends to the backup is answered later, by whoever applies the backup's ack
//! ([`Lanes::handle_ack`](crate::lanes::Lanes::handle_ack), called by the server's ack reader).
//! The queued write carries its [`ReplyTo`], so that caller answers the client itself:
//!
//! - [`ReplyTo::Stream`]: a client stream's answer sink (the server's session encodes the answer
//!   straight into the stream's outbox and wakes its writer) plus the request's [`Ticket`]. No
//!   channel, no wake-up of the session task per write: the fast path of every QUIC client.
//! - [`ReplyTo::Once`]: a callback run once with the answer (the server wraps a tokio oneshot
//!   sender in it for the HTTP gateway; the simulator and unit tests a channel of their own).
//!
//! These are traits and callbacks, not polled queues: an answer is delivered by whichever thread
//! applies the ack, without a hop through the caller (no channel message, no wake-up per write),
//! and the core stays free of any runtime. A [`Waiter`] holds one of them and is answered exactly
//! once: [`Waiter::send`] consumes it, and one dropped unanswered (a bug, or a lane reset that
//! forgot it) answers `indeterminate` — a stream through [`StreamAnswers::lost`], a callback by
//! being dropped uncalled (a oneshot sender inside it then reads as "fate unknown").

use std::sync::Arc;
use std::time::Instant;

use quickv_proto::{OpKind, Reply};

/// A client stream that takes answers to its replicated writes from another task.
pub trait StreamAnswers: Send + Sync + std::fmt::Debug {
    /// Delivers `reply` to the request `ticket` names; `now` is when the answer became known
    /// (read once per batch of acks, not per write). Called once per ticket, possibly with a
    /// lane's lock held: it must not block or call back into the replication.
    fn answer(&self, ticket: Ticket, reply: Reply, now: Instant);

    /// Delivers `reply` (`indeterminate`) for a ticket whose waiter was dropped unanswered: the
    /// core has no time to give (it never reads the clock), so the stream takes its own.
    fn lost(&self, ticket: Ticket, reply: Reply);
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
pub enum ReplyTo {
    /// A callback run once with the answer; dropped uncalled when the write's fate is unknown
    /// (a channel sender inside it then reads as `indeterminate`).
    Once(Box<dyn FnOnce(Reply) + Send>),
    /// A client stream's answer sink and the request to answer there.
    Stream(Arc<dyn StreamAnswers>, Ticket),
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyTo::Once(_) => f.write_str("ReplyTo::Once"),
            ReplyTo::Stream(stream, ticket) => f
                .debug_tuple("ReplyTo::Stream")
                .field(stream)
                .field(ticket)
                .finish(),
        }
    }
}

/// A [`ReplyTo`] that is answered exactly once: by [`Waiter::send`], or `indeterminate` on drop.
#[derive(Debug)]
pub struct Waiter(Option<ReplyTo>);

/// The answer (`indeterminate`) of a write whose waiter was dropped unanswered.
pub const LOST: &str = "the server lost track of this write";

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
            // Dropping the callback (and any sender in it) is its way to say "fate unknown".
            Some(ReplyTo::Once(_)) | None => {}
            Some(ReplyTo::Stream(stream, ticket)) => {
                stream.lost(ticket, Reply::Indeterminate(LOST.into()))
            }
        }
    }
}

fn deliver(to: ReplyTo, reply: Reply, now: Instant) {
    match to {
        ReplyTo::Once(answer) => answer(reply),
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
            self.lost(ticket, reply)
        }

        fn lost(&self, ticket: Ticket, reply: Reply) {
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
            started: crate::testing::origin(),
        }
    }

    #[test]
    fn a_stream_waiter_is_answered_once_and_a_dropped_one_indeterminate() {
        let stream = Arc::new(Recorded::default());
        Waiter::new(ReplyTo::Stream(stream.clone(), ticket(1)))
            .send(Reply::Ok, crate::testing::origin());
        drop(Waiter::new(ReplyTo::Stream(stream.clone(), ticket(2))));
        let got = stream.0.lock().expect("not poisoned").clone();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], (1, Reply::Ok));
        assert!(matches!(&got[1], (2, Reply::Indeterminate(_))), "{got:?}");
    }

    #[test]
    fn a_dropped_callback_waiter_is_never_called_and_a_sent_one_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        drop(Waiter::new(ReplyTo::Once(Box::new(move |r| {
            let _ = tx.send(r);
        }))));
        assert!(rx.try_recv().is_err(), "dropped: fate unknown");
        let (tx, rx) = std::sync::mpsc::channel();
        Waiter::new(ReplyTo::Once(Box::new(move |r| {
            let _ = tx.send(r);
        })))
        .send(Reply::Exists, crate::testing::origin());
        assert_eq!(rx.try_recv().expect("answered"), Reply::Exists);
        assert!(rx.try_recv().is_err(), "once");
    }
}
