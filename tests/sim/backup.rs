//! The backup's side of the simulated pair: a pump for the core's [`BackupLink`], as the server's
//! driver (`replication/backup.rs`) is one. Control messages go to the machine (after a seeded
//! driver lag), its output is carried out (frames, closes, our snapshot, the data streams), its
//! bucket jobs run as events that end after a virtual delay, and its timer is armed on virtual
//! time. The data streams apply on the same lock-light path as the server's
//! ([`BackupShared::apply_pass`]); a resync is a job too, and holds its stream until it ends.

use super::*;

/// The data-stream side of the backup's admitted link, as the server's driver keeps it.
pub(super) struct BLink {
    pub(super) conn: u64,
    /// The link's generation (what fences its appliers).
    pub(super) generation: u64,
    /// Whether the machine said the transfer is over (data streams are accepted then).
    pub(super) running: bool,
    pub(super) inbox: HashMap<usize, BytesMut>,
    pub(super) appliers: HashMap<usize, StreamApplier>,
    /// Streams waiting for a resync job to end before they apply more.
    pub(super) blocked: HashSet<usize>,
    /// What the backup records for each write it applies on this link (the primary's run id and
    /// the link's epoch).
    pub(super) mark: LaneMark,
}

pub(super) struct Backup {
    pub(super) proc: u64,
    /// The backup's side of the link: the core's machine, the one the server pumps.
    pub(super) core: BackupLink,
    pub(super) store: Arc<Store>,
    pub(super) counters: Counters,
    /// The data streams of the admitted link.
    pub(super) link: Option<BLink>,
    /// Bucket jobs running: a bootstrap's bucket, or a resync with the stream it holds.
    pub(super) jobs: HashMap<JobId, BackupJob>,
    /// When the machine's timer is armed.
    pub(super) timer_at: Option<Ms>,
    /// Per connection, until when its control messages are still being handed over (its close
    /// is noticed after them, as a reader drains its buffer before it sees the error).
    pub(super) ctl_busy: HashMap<u64, Ms>,
    /// Connections whose first message the machine has had.
    pub(super) connected: HashSet<u64>,
    /// Per connection, its reader's lag in ms (see `Sim::backup_ctl_bytes`).
    pub(super) slow_readers: HashMap<u64, Ms>,
    /// A graceful stop is under way.
    pub(super) stopping: bool,
}

/// A bucket job of the backup.
pub(super) enum BackupJob {
    Bucket(quickv_core::transfer::BucketJob),
    Resync {
        conn: u64,
        stream: usize,
        job: quickv_core::apply::ResyncJob,
    },
}

impl Sim {
    // ---- inputs ----

    /// Control bytes of `conn` reached the backup: decoded now, handed to the machine after the
    /// driver's lag (in order per connection). One connection in ten has a slow reader (its task
    /// waits 50-1500 ms for the runtime before each batch, the same for the connection's life),
    /// as on a busy multi-threaded runtime; the others hand each batch over at once. (No draw per
    /// batch: how a bucket's entries fall into chunks depends on the map's order, and a seed must
    /// replay exactly.)
    pub(super) fn backup_ctl_bytes(&mut self, conn: u64, mut buf: BytesMut) {
        let limits = self.limits;
        let mut msgs = Vec::new();
        loop {
            match PeerMsg::decode(&mut buf, &limits) {
                Ok(Some(msg)) => msgs.push(msg),
                Ok(None) => break,
                Err(e) => return self.cut(conn, &e.to_string()),
            }
        }
        if msgs.is_empty() {
            return;
        }
        let lag = match self
            .backup
            .as_ref()
            .map(|b| b.slow_readers.get(&conn).copied())
        {
            None => return,
            Some(Some(lag)) => lag,
            Some(None) => {
                let lag = match self.rng.chance(10) {
                    true => self.rng.range(50, 1500),
                    false => 0,
                };
                if let Some(b) = self.backup.as_mut() {
                    b.slow_readers.insert(conn, lag);
                }
                lag
            }
        };
        let now = self.now;
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let at = (now + lag).max(b.ctl_busy.get(&conn).copied().unwrap_or(0));
        b.ctl_busy.insert(conn, at);
        self.at(at - now, Event::BackupCtl { conn, msgs });
    }

    /// A connection's control messages reach the machine (whether or not the connection is still
    /// alive: they were read before its close).
    pub(super) fn backup_ctl(&mut self, conn: u64, msgs: Vec<PeerMsg>) {
        for msg in msgs {
            let now = self.clock();
            let Some(b) = self.backup.as_mut() else {
                return;
            };
            let late_before = b.core.late_inputs();
            if b.connected.insert(conn) {
                b.core.handle_connect(conn, msg, now);
            } else {
                b.core.handle_ctl(conn, msg, now);
            }
            let late = b.core.late_inputs() - late_before;
            self.cov.late_ctl_ignored += late;
            self.backup_outputs();
        }
    }

    /// The backup noticed that `conn` is gone: after the control messages it had read.
    pub(super) fn backup_conn_closed(&mut self, conn: u64, cause: String) {
        let now = self.now;
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        if let Some(&busy) = b.ctl_busy.get(&conn).filter(|&&t| t > now) {
            let side = Side::Backup;
            return self.at(busy - now, Event::LinkDown { conn, side, cause });
        }
        b.ctl_busy.remove(&conn);
        if b.link.as_ref().is_some_and(|l| l.conn == conn) {
            b.link = None;
        }
        let clock = self.clock();
        if let Some(b) = self.backup.as_mut() {
            b.core.handle_conn_closed(conn, cause, clock);
        }
        self.backup_outputs();
    }

    /// The machine's timer fired.
    pub(super) fn backup_timer(&mut self, proc: u64, at: Ms) {
        let now = self.clock();
        let Some(b) = self.backup.as_mut().filter(|b| b.proc == proc) else {
            return;
        };
        if b.timer_at != Some(at) {
            return;
        }
        b.timer_at = None;
        b.core.handle_timeout(now);
        self.backup_outputs();
    }

    /// A bucket job ends: it installs its bucket now and reports to the machine.
    pub(super) fn backup_job_done(&mut self, proc: u64, id: JobId) {
        let now = self.clock();
        let Some(b) = self.backup.as_mut().filter(|b| b.proc == proc) else {
            return;
        };
        let Some(job) = b.jobs.remove(&id) else {
            return;
        };
        if !b.core.shared().live(id.generation) || b.core.live_conn().is_none() {
            self.cov.jobs_outlived_link += 1;
        }
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let (result, resumed) = match job {
            BackupJob::Bucket(job) => (job.apply(&b.store, now), None),
            BackupJob::Resync { conn, stream, job } => {
                let applied = job.apply(&b.store, &b.counters);
                (applied.map(|()| 0).map_err(|e| e.0), Some((conn, stream)))
            }
        };
        let failed = result.as_ref().err().cloned();
        b.core.handle_job_done(id, result, now);
        if let Some((conn, stream)) = resumed {
            if let Some(l) = b.link.as_mut().filter(|l| l.conn == conn) {
                l.blocked.remove(&stream);
            }
            match failed {
                Some(e) => self.cut(conn, &format!("a resync failed: {e}")),
                None => self.backup_drain(conn),
            }
        }
        self.backup_outputs();
    }

    /// A graceful stop of the backup begins.
    pub(super) fn backup_shutdown(&mut self) {
        let now = self.clock();
        if let Some(b) = self.backup.as_mut() {
            b.stopping = true;
            b.core.handle_shutdown(now);
        }
        self.backup_outputs();
    }

    // ---- outputs ----

    /// Carries out everything the machine asked for, and arms its timer.
    pub(super) fn backup_outputs(&mut self) {
        let limits = self.limits;
        loop {
            let now = self.clock();
            let Some(b) = self.backup.as_mut() else {
                return;
            };
            if let Some((conn, msg)) = b.core.poll_transmit() {
                self.send(conn, Side::Backup, 0, &[msg]);
                continue;
            }
            let Some(event) = b.core.poll_event() else {
                break;
            };
            match event {
                LinkEvent::Close { conn, reason } => {
                    if b.link.as_ref().is_some_and(|l| l.conn == conn) {
                        b.link = None;
                    }
                    self.cut(conn, &reason);
                }
                LinkEvent::Apply { id, job } => {
                    let size = job.bytes();
                    b.jobs.insert(id, BackupJob::Bucket(job));
                    self.start_job(id, size);
                }
                LinkEvent::SendSnapshot { conn, buckets } => {
                    let (msgs, _, _) = snapshot_msgs(&b.store, &buckets, &limits, now);
                    b.core.handle_snapshot_sent(conn, Ok(()), now);
                    self.send(conn, Side::Backup, 0, &msgs);
                }
                LinkEvent::Admitted {
                    conn,
                    generation,
                    epoch,
                    ..
                } => {
                    let held = b.core.jobs_outstanding() > 0;
                    b.link = Some(BLink {
                        conn,
                        generation,
                        running: false,
                        inbox: HashMap::new(),
                        appliers: HashMap::new(),
                        blocked: HashSet::new(),
                        mark: LaneMark::default(),
                    });
                    if held {
                        self.cov.openings_held += 1;
                    }
                    self.note(format!("backup admits connection {conn} at epoch {epoch}"));
                }
                LinkEvent::Running {
                    conn,
                    generation,
                    mark,
                } => {
                    if let Some(l) = b
                        .link
                        .as_mut()
                        .filter(|l| l.conn == conn && l.generation == generation)
                    {
                        l.running = true;
                        l.mark = mark;
                    }
                    self.backup_drain(conn);
                }
                LinkEvent::TransferVerified { .. } => {}
                LinkEvent::Lost { conn, cause } => {
                    self.note(format!("backup: link {conn} lost: {cause}"))
                }
            }
        }
        self.arm_backup_timer();
    }

    /// Starts a job's virtual run: short mostly, sometimes long; now and then the link drops
    /// while it runs (so that a newer link is admitted with the job still going).
    fn start_job(&mut self, id: JobId, cost: u64) {
        let Some(proc) = self.backup.as_ref().map(|b| b.proc) else {
            return;
        };
        let delay = if self.rng.chance(10) {
            self.rng.range(200, 1500)
        } else {
            1 + cost / 2000 + self.rng.range(0, 20)
        };
        self.at(delay, Event::BackupJob { proc, id });
        if self.faults && self.now >= self.quiet_until && self.rng.chance(4) {
            let conn = self.backup.as_ref().and_then(|b| b.core.live_conn());
            if let Some(conn) = conn {
                let cut = self.rng.range(0, delay);
                let cause = "link lost while a bucket job runs".to_string();
                self.cov.cuts += 1;
                self.at(cut, Event::Cut { conn, cause });
            }
        }
    }

    fn arm_backup_timer(&mut self) {
        let base = base();
        let now = self.now;
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let Some(at) = b.core.poll_timeout() else {
            return;
        };
        let at = (at.saturating_duration_since(base).as_millis() as Ms).max(now);
        if b.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        b.timer_at = Some(at);
        let proc = b.proc;
        self.at(at - now, Event::BackupTimer { proc, at });
    }

    // ---- data streams ----

    /// Bytes of a data stream of `conn`: buffered, applied once the link runs.
    pub(super) fn backup_data(&mut self, conn: u64, stream: usize, bytes: &[u8]) {
        let Some(l) = self
            .backup
            .as_mut()
            .and_then(|b| b.link.as_mut())
            .filter(|l| l.conn == conn)
        else {
            return;
        };
        l.inbox.entry(stream).or_default().extend_from_slice(bytes);
        self.backup_drain(conn);
    }

    /// Applies what the data streams buffered, once the link runs (the real backup accepts the
    /// data streams only after the transfer, so earlier bytes wait in QUIC's buffers).
    pub(super) fn backup_drain(&mut self, conn: u64) {
        let limits = self.limits;
        let now = self.clock();
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let Some(link) = b.link.as_mut().filter(|l| l.conn == conn && l.running) else {
            return;
        };
        let shared: Arc<BackupShared> = b.core.shared().clone();
        let mut replies = Vec::new();
        let mut failure = None;
        let mut resyncs = Vec::new();
        let mut streams: Vec<usize> = link.inbox.keys().copied().filter(|s| *s > 0).collect();
        streams.sort_unstable(); // the map's order is random: a seed must replay exactly
        for stream in streams {
            if link.blocked.contains(&stream) {
                continue;
            }
            let Some(buf) = link.inbox.get_mut(&stream) else {
                continue;
            };
            let applier = link.appliers.entry(stream).or_default();
            let mut out = Vec::new();
            let pass = shared.apply_pass(
                applier,
                link.generation,
                link.mark,
                buf,
                &limits,
                &b.store,
                &b.counters,
                now,
                &mut out,
            );
            match pass {
                Ok(Pass::Done) => {}
                Ok(Pass::Resync(job)) => match b.core.begin_job(link.generation) {
                    Some(id) => {
                        link.blocked.insert(stream);
                        resyncs.push((id, stream, job));
                    }
                    None => failure = Some("link superseded".to_string()),
                },
                Err(e) => failure = Some(e.to_string()),
            }
            let applied = applier.acks(&mut out);
            shared.record_applied(link.generation, &applied);
            shared.heard(link.generation, now);
            if !out.is_empty() {
                replies.push((stream, out));
            }
            if failure.is_some() {
                break;
            }
        }
        let ids: Vec<JobId> = resyncs.iter().map(|(id, ..)| *id).collect();
        for (id, stream, job) in resyncs {
            b.jobs.insert(id, BackupJob::Resync { conn, stream, job });
        }
        for id in ids {
            self.start_job(id, 1000);
        }
        for (stream, msgs) in replies {
            self.send(conn, Side::Backup, stream, &msgs);
        }
        if let Some(e) = failure {
            self.note(format!("backup: data stream failed: {e}"));
            self.cut(conn, &e);
        }
    }

    /// At quiescence: the backup's running counts and digests describe its contents.
    pub(super) fn backup_totals_agree(&self) -> Result<(), String> {
        let Some(b) = self.backup.as_ref() else {
            return Ok(());
        };
        for bucket in BucketId::all() {
            let (count, digest) = (b.store.bucket_len(bucket), b.store.digest(bucket));
            let held = b.store.bucket_snapshot(bucket).len() as u64;
            let counted = b.store.recompute_digest(bucket);
            if count != held || digest != counted {
                return Err(format!(
                    "backup bucket {bucket}: running count {count} and digest {digest}, but it \
                     holds {held} entries with digest {counted}"
                ));
            }
        }
        Ok(())
    }
}
