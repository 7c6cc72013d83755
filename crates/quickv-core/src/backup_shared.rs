//! What the backup's link machine shares with its data-stream appliers, lock-light (see
//! [`crate::backup_link`]): the data streams never take the machine's lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quickv_proto::peer::{LaneMark, PeerMsg, ReplOffset};
use quickv_proto::Limits;

use crate::apply::{Pass, StreamApplier};
use crate::commit_point::{apply_marked, Marks};
use crate::counters::Counters;
use crate::error::LinkError;
use crate::store::{Store, BUCKETS};

/// What the backup shares with its data-stream appliers, lock-light: the link generation they
/// check before every write, when the live link was last heard from, and the lane marks and
/// applied offsets they record.
#[derive(Debug)]
pub struct BackupShared {
    /// The generation of the link whose writes may be applied; advanced only by an admission.
    generation: AtomicU64,
    /// The origin of `heard_at`.
    origin: Instant,
    /// When the live link was last heard from, in milliseconds since `origin`, plus one; 0 when
    /// there is no live link.
    heard_at: AtomicU64,
    /// Per lane, the last write applied and the link it came on (reported after the hello).
    /// Locked by each pass around its fence check and its writes, and by the report.
    marks: Mutex<Marks>,
    /// Per lane, the offset applied on the live link (for status).
    applied: [AtomicU64; BUCKETS],
}

impl BackupShared {
    pub(crate) fn new(origin: Instant) -> BackupShared {
        BackupShared {
            generation: AtomicU64::new(0),
            origin,
            heard_at: AtomicU64::new(0),
            marks: Mutex::new([LaneMark::default(); BUCKETS]),
            applied: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Whether link `generation` is still the one whose writes are applied.
    pub fn live(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    /// Link `generation` was heard from at `now` (a data batch): a fresh primary process does not
    /// replace a link heard from recently.
    pub fn heard(&self, generation: u64, now: Instant) {
        if self.live(generation) {
            let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
            self.heard_at.store(ms + 1, Ordering::Relaxed);
        }
    }

    /// How long ago the live link was last heard from; `None` without a live link.
    pub(crate) fn heard_ago(&self, now: Instant) -> Option<Duration> {
        match self.heard_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                now.saturating_duration_since(self.origin)
                    .saturating_sub(Duration::from_millis(at - 1)),
            ),
        }
    }

    /// One pass of a data stream's applier over its buffered frames, for link `generation`
    /// (marking each write with `mark`): [`apply_marked`] under the marks' lock, so a newer
    /// link's report of the marks (taken after its admission) sees every write this pass got in.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_pass(
        &self,
        applier: &mut StreamApplier,
        generation: u64,
        mark: LaneMark,
        buf: &mut bytes::BytesMut,
        limits: &Limits,
        store: &Store,
        counters: &Counters,
        now: Instant,
        out: &mut Vec<PeerMsg>,
    ) -> Result<Pass, LinkError> {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let live = || self.live(generation);
        apply_marked(
            applier, &mut marks, mark, buf, limits, store, counters, now, live, out,
        )
    }

    /// Records a stream's applied offsets (status), if its link is still live.
    pub fn record_applied(&self, generation: u64, applied: &[ReplOffset; BUCKETS]) {
        if self.live(generation) {
            for (slot, &a) in self.applied.iter().zip(applied) {
                if a > 0 {
                    slot.store(a, Ordering::Relaxed);
                }
            }
        }
    }

    /// The offsets applied per lane on the live link.
    pub fn applied(&self) -> [ReplOffset; BUCKETS] {
        std::array::from_fn(|i| self.applied[i].load(Ordering::Relaxed))
    }

    /// The lane marks, for the report after a hello.
    pub(crate) fn marks(&self) -> Marks {
        *self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new link is admitted: the next generation, which fences every older link's appliers.
    pub(crate) fn advance(&self) -> u64 {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// The live link is gone.
    pub(crate) fn not_heard(&self) {
        self.heard_at.store(0, Ordering::Relaxed);
    }

    /// A new link's lanes start from offset 0.
    pub(crate) fn reset_applied(&self) {
        for a in &self.applied {
            a.store(0, Ordering::Relaxed);
        }
    }
}
