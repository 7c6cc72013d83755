//! A lane resync built off the runtime and outside the lane's lock, and the ack clock that tells
//! a stalled link from a busy one. Both are plain code that takes the time as an argument.
//!
//! **Resync.** When the backup reports a digest mismatch on lane `b`, the primary resends bucket
//! `b` as it stands after the lane's last offset. Building that image walks the whole bucket
//! (hundreds of milliseconds for a bucket of a million entries), so it must neither hold the lane's
//! lock (every write to the bucket takes it, on the runtime) nor run on the runtime (the primary's
//! runtime is single-threaded by default: keep-alives and acks would wait). The lane is *paused*
//! instead ([`Lanes::begin_resync`](crate::lanes::Lanes::begin_resync)): new writes to the bucket
//! are refused (`unavailable`, never applied) while the image is built, so the lane's offset and
//! its overlay of writes in flight stay fixed. The image is the store's bucket with that overlay
//! laid over it ([`ResyncPlan::build`], on a blocking thread): exact although acks keep applying
//! in-flight writes to the store meanwhile, because every key such an ack touches is in the
//! overlay, which wins. The frames are then queued on the lane at the offset planned, if the link
//! that planned it is still the lanes' link ([`Lanes::finish_resync`](crate::lanes::Lanes::finish_resync)).
//!
//! **Ack clock.** A link is declared dead when a lane has something outstanding and has seen no ack
//! progress for the ack timeout ([`AckClock::stalled`]), not when its oldest queued write is older
//! than that: a burst queued faster than the link drains it keeps making progress and is not a
//! dead peer. While a resync is outstanding every lane waits for the longer resync limit instead
//! (the backup checks and installs a whole bucket, off its runtime, before it reads on the data
//! stream that carried it, so the acks of the lanes sharing that stream wait too).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::store::{BucketId, Digest, Store};
use crate::transfer::chunks;
use quickv_proto::peer::{PeerMsg, ReplOffset};
use quickv_proto::Limits;

/// What a paused lane needs to build its resync: the bucket, the offset the resync will take,
/// and the writes in flight on the lane (each key's value after the last of them; `None` =
/// deleted).
#[derive(Debug, Clone)]
pub struct ResyncPlan {
    /// The bucket to resend.
    pub bucket: BucketId,
    /// The lane offset of the resync (`ReplaceEnd`).
    pub offset: ReplOffset,
    /// The link generation that planned it ([`Lanes::enable`](crate::lanes::Lanes::enable)).
    pub link: u64,
    /// The lane's overlay when it was paused.
    pub overlay: Vec<(Bytes, Option<Bytes>)>,
}

impl ResyncPlan {
    /// The resync's frames (`ReplaceBegin`, chunks, `ReplaceEnd`): the store's bucket with the
    /// overlay laid over it. Walks the bucket: run it on a blocking thread.
    pub fn build(&self, store: &Store, limits: &Limits) -> Bytes {
        let mut entries: HashMap<Bytes, Bytes> =
            store.bucket_snapshot(self.bucket).into_iter().collect();
        for (key, after) in &self.overlay {
            match after {
                Some(v) => entries.insert(key.clone(), v.clone()),
                None => entries.remove(key),
            };
        }
        let entries: Vec<_> = entries.into_iter().collect();
        let digest = Digest::of_entries(entries.iter().map(|(k, v)| (k, v)));
        let mut out = BytesMut::new();
        PeerMsg::ReplaceBegin(self.bucket).encode(&mut out);
        for chunk in chunks(entries, limits) {
            chunk.encode(&mut out);
        }
        PeerMsg::ReplaceEnd {
            bucket: self.bucket,
            offset: self.offset,
            digest,
        }
        .encode(&mut out);
        out.freeze()
    }
}

/// A lane's ack clock: since when it has waited for ack progress, and whether a resync is among
/// what it waits for.
#[derive(Debug, Default, Clone, Copy)]
pub struct AckClock {
    /// When the lane last made progress (an ack that advanced it) or, if it was idle, when it got
    /// something to wait for; `None` while nothing is outstanding.
    since: Option<Instant>,
    /// Resyncs queued and not yet acknowledged.
    resyncs: usize,
}

impl AckClock {
    /// Something was queued at `now` (a write, a refusal behind one, a resync).
    pub fn queued(&mut self, now: Instant, resync: bool) {
        self.since.get_or_insert(now);
        self.resyncs += usize::from(resync);
    }

    /// An ack advanced the lane at `now`, settling `resyncs` of the queued resyncs; `idle` when
    /// nothing is left outstanding.
    pub fn progressed(&mut self, now: Instant, resyncs: usize, idle: bool) {
        self.resyncs = self.resyncs.saturating_sub(resyncs);
        self.since = (!idle).then_some(now);
    }

    /// Whether a resync is outstanding on the lane.
    pub fn resyncing(&self) -> bool {
        self.resyncs > 0
    }

    /// Forgets everything outstanding (the link is gone).
    pub fn reset(&mut self) {
        *self = AckClock::default();
    }

    /// How long the lane has waited at `now` without progress, if that is past its limit: the ack
    /// timeout, or `resync_limit` while a resync is outstanding.
    pub fn stalled(
        &self,
        now: Instant,
        ack_timeout: Duration,
        resync_limit: Duration,
    ) -> Option<Duration> {
        let waited = now.saturating_duration_since(self.since?);
        let limit = if self.resyncs > 0 {
            resync_limit
        } else {
            ack_timeout
        };
        (waited > limit).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_lane_that_keeps_making_progress_is_not_stalled() {
        let (ack, resync) = (Duration::from_secs(1), Duration::from_secs(10));
        let t0 = crate::testing::origin();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut clock = AckClock::default();
        assert_eq!(clock.stalled(at(5_000), ack, resync), None, "idle");
        clock.queued(at(0), false);
        for ms in (0..5_000).step_by(500) {
            clock.queued(at(ms), false);
            clock.progressed(at(ms + 400), 0, false);
        }
        assert_eq!(
            clock.stalled(at(5_200), ack, resync),
            None,
            "writes queued for 5 s, acks every 500 ms: busy, not stalled"
        );
        assert!(
            clock.stalled(at(6_000), ack, resync).is_some(),
            "1.1 s silent"
        );
        clock.queued(at(6_000), true);
        clock.progressed(at(6_000), 0, false);
        assert_eq!(
            clock.stalled(at(8_000), ack, resync),
            None,
            "a resync waits longer"
        );
        assert!(clock.stalled(at(16_100), ack, resync).is_some());
        clock.progressed(at(16_100), 1, true);
        assert_eq!(clock.stalled(at(99_000), ack, resync), None);
    }

    #[test]
    fn a_resync_image_is_the_bucket_with_the_writes_in_flight_laid_over() {
        let store = Store::new();
        let key = |i: u32| Bytes::from(format!("k{i}"));
        let b = BucketId::of(&key(0));
        let mine: Vec<_> = (0..2_000)
            .map(key)
            .filter(|k| BucketId::of(k) == b)
            .collect();
        for k in &mine {
            store.put(k.clone(), Bytes::from("old"));
        }
        let plan = ResyncPlan {
            bucket: b,
            offset: 7,
            link: 1,
            overlay: vec![
                (mine[0].clone(), Some(Bytes::from("new"))),
                (mine[1].clone(), None),
            ],
        };
        let mut frames = BytesMut::from(&plan.build(&store, &Limits::default())[..]);
        let mut got = HashMap::new();
        let mut end = None;
        while let Some(msg) = PeerMsg::decode(&mut frames, &Limits::default()).expect("valid") {
            match msg {
                PeerMsg::BucketChunk(entries) => got.extend(entries),
                PeerMsg::ReplaceEnd { offset, digest, .. } => end = Some((offset, digest)),
                _ => {}
            }
        }
        assert_eq!(got.len(), mine.len() - 1);
        assert_eq!(got.get(&mine[0]), Some(&Bytes::from("new")));
        assert!(!got.contains_key(&mine[1]));
        let digest = Digest::of_entries(got.iter());
        assert_eq!(end, Some((7, digest)));
    }
}
