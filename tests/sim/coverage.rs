//! What the seeds exercised: counters summed over a run, printed at its end, and the floors a run
//! of enough seeds must reach (a fault kind or a session path that never happens is not tested).

/// Declares the counters: name, what it counts, and whether a run must see it at least once.
macro_rules! coverage {
    ($($field:ident: $what:literal, $floor:literal;)*) => {
        /// Counters of one seed, or summed over a run.
        #[derive(Clone, Copy, Debug, Default)]
        pub(super) struct Coverage {
            $(#[doc = $what] pub(super) $field: u64,)*
        }

        impl Coverage {
            /// Adds another seed's counters.
            pub(super) fn add(&mut self, other: &Coverage) {
                $(self.$field += other.$field;)*
            }

            /// (name, what, value, floor applies).
            pub(super) fn rows(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
                vec![$((stringify!($field), $what, self.$field, $floor),)*]
            }
        }
    };
}

coverage! {
    retries: "write attempts resent with their session stamp", true;
    retries_afresh: "retries decided afresh (no record of the original, none in flight)", true;
    retries_in_flight: "retries sent while their original was still queued in its lane", true;
    retries_answered: "retries answered from the session table", true;
    retries_expired: "retries refused SessionExpired (window or eviction horizon)", true;
    client_drops: "client connections lost with a write in flight (retried at once)", true;
    session_evictions: "sessions evicted from the tables (count or byte limits)", true;
    sessions_swept: "sessions swept as idle", false;
    cuts: "peer connections cut (fault)", true;
    partitions: "partitions", true;
    crashes: "crashes (memory lost)", true;
    primary_shutdowns: "graceful shutdowns of the primary", true;
    backup_shutdowns: "graceful shutdowns of the backup", true;
    stale_primaries: "stale primary processes started (older epoch, claims current data)", true;
    stale_refusals: "stale primaries refused by the backup (StaleEpoch goodbye)", true;
    corruptions: "entries slipped into the backup's store behind the lanes' back", true;
    mismatches: "digest mismatches reported (each starts a bucket resync)", true;
    resyncs: "bucket resyncs acknowledged by the backup", true;
    slow_resyncs: "resyncs acknowledged later than the ack timeout after their mismatch", true;
    big_bucket_seeds: "seeds with a large bucket (preloaded) and a slow link", true;
    backup_reads: "reads answered by the backup", true;
    backup_reads_refused: "reads refused by the backup (not current, or fenced)", true;
    backup_read_violations: "seeds whose history with backup reads is not linearizable (issue 22)", false;
    primary_reads_waited: "reads at the primary that waited for the ack of their key's write", true;
    lost_writes_kept: "unresolved writes of a lost link applied at the warm start (the backup applied them)", true;
    lost_writes_dropped: "unresolved writes of a lost link dropped at the warm start (the backup never did)", true;
    jobs_outlived_link: "backup bucket jobs that ended after their link was lost or superseded", true;
    openings_held: "links admitted while an older link's bucket job still ran (opening held)", true;
    late_ctl_ignored: "control messages of a superseded link, dropped by the backup's machine", true;
    primary_jobs_outlived_link: "primary bucket jobs (the backup's data) that ended after their link was lost", true;
    primary_openings_held: "primary links whose hello waited for an older link's bucket job", true;
    lost_writes_discarded: "unresolved writes forgotten by a primary that took the backup's data", false;
}

impl Coverage {
    /// The counters, one per line.
    pub(super) fn report(&self) -> String {
        self.rows()
            .into_iter()
            .map(|(name, what, value, _)| format!("  {name:<24} {value:>10}  {what}\n"))
            .collect()
    }

    /// Counters under their floor (zero although the run must exercise them).
    pub(super) fn below_floor(&self) -> Vec<&'static str> {
        self.rows()
            .into_iter()
            .filter(|(_, _, value, floor)| *floor && *value == 0)
            .map(|(name, ..)| name)
            .collect()
    }
}
