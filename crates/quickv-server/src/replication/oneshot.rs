//! The core's answer callbacks and wake-ups on tokio: a replicated write answered on a oneshot
//! channel (the HTTP gateway, the simulator, tests), and the lanes' "drained" signal as a
//! `Notify`.

use std::time::Instant;

use quickv_core::lanes::{Lanes, Wake};
use quickv_core::reply::{ReplyTo, LOST};
use quickv_core::store::Store;
use quickv_proto::{Op, Reply, SessionWrite};
use tokio::sync::oneshot;

/// What submitting a client write gives back: the receiver of its answer once the backup has
/// acknowledged it (a dropped sender means its fate is unknown: `indeterminate`), or the answer
/// now (refused, or decided without replicating anything).
pub type Submitted = Result<oneshot::Receiver<Reply>, Reply>;

/// A [`ReplyTo`] that answers on `tx` (dropped unanswered: its receiver reads "fate unknown").
pub fn reply_to(tx: oneshot::Sender<Reply>) -> ReplyTo {
    ReplyTo::Once(Box::new(move |reply| {
        // The receiver may be gone (an HTTP client hung up): nobody is left to answer.
        let _ = tx.send(reply);
    }))
}

/// Runs `submit` with a oneshot channel as the place to answer a write that waits for its ack:
/// the [`Submitted`] form of a submission (`submit` returns `Some(answer)` when answered now).
pub fn via_oneshot(submit: impl FnOnce(&mut dyn FnMut() -> ReplyTo) -> Option<Reply>) -> Submitted {
    let mut rx = None;
    let mut waiting = || {
        let (tx, receiver) = oneshot::channel();
        rx = Some(receiver);
        reply_to(tx)
    };
    match submit(&mut waiting) {
        Some(now) => Err(now),
        // A submission that queued its write made its waiter first, so `rx` is set; were it not,
        // the fate of the write would be unknown.
        None => rx.ok_or_else(|| Reply::Indeterminate(LOST.into())),
    }
}

/// [`Lanes::submit`] answered on a oneshot channel, at the clock's `now` (the simulator's
/// clients and unit tests).
pub trait SubmitOneshot {
    /// Decides a write (which may carry a session stamp) as [`Lanes::submit`] does.
    fn submit_stamped(
        &self,
        store: &Store,
        op: Op,
        session: Option<SessionWrite>,
        refusal: impl FnOnce() -> String,
    ) -> Submitted;
}

impl SubmitOneshot for Lanes {
    fn submit_stamped(
        &self,
        store: &Store,
        op: Op,
        session: Option<SessionWrite>,
        refusal: impl FnOnce() -> String,
    ) -> Submitted {
        via_oneshot(|to| self.submit(store, op, session, refusal, to, Instant::now()))
    }
}

/// The lanes' "a queue became empty" signal, for a graceful stop to wait on.
#[derive(Debug, Default)]
pub struct Notified(pub tokio::sync::Notify);

impl Wake for Notified {
    fn wake(&self) {
        self.0.notify_waiters();
    }
}
