//! The primary's link timers, without a clock: when the link is declared dead for want of acks,
//! and when the lanes' digest checks are sent. The server arms one timer at
//! [`LinkTimers::poll_timeout`] and calls [`LinkTimers::handle_timeout`] when it fires; the
//! simulator calls the same on its virtual time. (Before this, each kept its own rule, and the
//! simulator's ack timeout differed from the server's: issue 20.)

use std::time::{Duration, Instant};

use crate::lanes::{CheckOutcome, Lanes};
use crate::store::{BucketId, Store};

/// The timers of one link with its lanes open.
#[derive(Debug, Clone)]
pub struct LinkTimers {
    /// No ack progress for this long while something is outstanding: the link is dead.
    ack_timeout: Duration,
    /// The same while a resync is outstanding (the backup installs a whole bucket first).
    resync_limit: Duration,
    /// Interval of the digest checks of every lane.
    check_every: Duration,
    /// When the ack clock is looked at next (a quarter of the ack timeout apart).
    next_look: Instant,
    /// When the lanes are checked next.
    next_check: Instant,
}

impl LinkTimers {
    /// Timers for lanes opened at `now`: the first digest checks go at once, the ack clock is
    /// looked at every quarter of `ack_timeout`.
    pub fn new(
        now: Instant,
        ack_timeout: Duration,
        resync_limit: Duration,
        check_every: Duration,
    ) -> LinkTimers {
        LinkTimers {
            ack_timeout,
            resync_limit,
            check_every,
            next_look: now + ack_timeout / 4,
            next_check: now,
        }
    }

    /// When the caller's timer should next fire.
    pub fn poll_timeout(&self) -> Instant {
        self.next_look.min(self.next_check)
    }

    /// Runs what is due at `now`: `Err(cause)` when a lane has had something outstanding and no
    /// ack progress for the ack timeout (the link is dead: the caller ends it), else `Ok(n)` with
    /// the number of digest checks sent.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        lanes: &Lanes,
        store: &Store,
    ) -> Result<u64, String> {
        if now >= self.next_look {
            self.next_look = now + self.ack_timeout / 4;
            if let Some((bucket, waited)) = lanes.stalled(now, self.ack_timeout, self.resync_limit)
            {
                return Err(format!(
                    "no ack from the backup within {:?} (lane {bucket} waited {waited:?} without \
                     progress)",
                    self.ack_timeout
                ));
            }
        }
        let mut sent = 0;
        if now >= self.next_check {
            self.next_check = now + self.check_every;
            for b in BucketId::all() {
                if let CheckOutcome::Sent = lanes.check(store, b) {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::testing::{submit, t0};

    #[test]
    fn checks_go_at_once_then_every_interval_and_silence_past_the_timeout_is_a_dead_link() {
        let (store, lanes) = (Store::new(), Lanes::default());
        let (txs, _rxs): (Vec<_>, Vec<_>) = (0..crate::store::BUCKETS)
            .map(|_| std::sync::mpsc::channel::<Bytes>())
            .unzip();
        lanes.enable(txs);
        let ms = Duration::from_millis;
        let mut timers = LinkTimers::new(t0(), ms(1000), ms(5000), ms(2000));
        assert_eq!(timers.poll_timeout(), t0());
        assert_eq!(timers.handle_timeout(t0(), &lanes, &store), Ok(32));
        assert_eq!(timers.poll_timeout(), t0() + ms(250));
        assert_eq!(timers.handle_timeout(t0() + ms(250), &lanes, &store), Ok(0));
        // A write outstanding and no ack: dead once the timeout has passed, not before.
        let op = quickv_proto::Op::Insert {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
        };
        let _pending = submit(&lanes, &store, op, None, "");
        // (the write was queued at t0 by `submit`)
        assert_eq!(timers.handle_timeout(t0() + ms(750), &lanes, &store), Ok(0));
        let dead = timers.handle_timeout(t0() + ms(1250), &lanes, &store);
        assert!(dead.is_err(), "{dead:?}");
    }
}
