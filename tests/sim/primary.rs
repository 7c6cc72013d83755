//! The primary's side of the simulated pair: the pump of its link machine ([`PrimaryLink`]), as
//! the server's `replication/primary.rs` pumps it. Nothing here decides anything of the protocol:
//! the dial timing, the opening, the transfer, the lanes' opening, the ack timeout, the digest
//! checks, a backup's goodbye and the graceful stop are the machine's; this moves bytes, runs
//! bucket jobs as events that end after a virtual delay, and arms the machine's timer.

use super::*;

/// The primary's settings on virtual time (the server's defaults, shortened where the simulator
/// shortens them).
pub(super) fn primary_config(proc: u64) -> PrimaryConfig {
    PrimaryConfig {
        run_id: proc,
        pair: 0,
        ack_timeout: Duration::from_millis(ACK_TIMEOUT_MS),
        step: Duration::from_millis(STEP_TIMEOUT_MS),
        check_every: Duration::from_millis(CHECK_EVERY_MS),
        drain: Duration::from_millis(faults::DRAIN_MS),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(250),
    }
}

/// The primary's connection while it is the live link: what the driver holds.
pub(super) struct PLink {
    pub(super) conn: u64,
    /// Bytes received per stream, not yet decoded.
    pub(super) inbox: HashMap<usize, BytesMut>,
    /// The lane writers' queues, one per data stream (once the lanes are open).
    pub(super) lane_rx: Vec<mpsc::Receiver<Bytes>>,
    /// The lanes' generation on this link ([`Lanes::enable_marked`]).
    pub(super) lanes_gen: u64,
}

impl Sim {
    // ---- inputs ----

    /// The machine asked for a dial: it connects at once if the backup is up and reachable.
    fn dial(&mut self) {
        let now = self.clock();
        let reachable = self
            .backup
            .as_ref()
            .map(|b| b.proc)
            .filter(|_| !self.partitioned);
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let Some(bproc) = reachable else {
            p.core.handle_dial_failed(now);
            return;
        };
        let pproc = p.proc;
        let conn = self.id();
        self.conns.insert(
            conn,
            Conn {
                alive: true,
                primary_proc: pproc,
                backup_proc: bproc,
                last: HashMap::new(),
            },
        );
        self.note(format!("primary {pproc} dials (connection {conn})"));
        if let Some(p) = self.primary.as_mut() {
            p.link = Some(PLink {
                conn,
                inbox: HashMap::new(),
                lane_rx: Vec::new(),
                lanes_gen: 0,
            });
            p.core.handle_connected(conn, now, &p.lanes, &p.store);
        }
    }

    /// `conn` is gone, as the primary notices it.
    pub(super) fn primary_link_lost(&mut self, conn: u64, cause: &str) {
        let now = self.clock();
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        if p.link.as_ref().is_some_and(|l| l.conn == conn) {
            p.link = None;
        }
        p.core
            .handle_conn_closed(conn, cause.to_string(), now, &p.lanes);
        self.primary_outputs();
    }

    /// The primary ends `conn` itself (a failed stream, a reset).
    pub(super) fn primary_link_failed(&mut self, conn: u64, cause: &str) {
        let now = self.clock();
        if let Some(p) = self.primary.as_mut() {
            p.core
                .handle_link_failed(conn, cause.to_string(), now, &p.lanes);
        }
        self.primary_outputs();
    }

    pub(super) fn primary_ctl(&mut self, conn: u64, msg: PeerMsg) {
        let now = self.clock();
        if let Some(p) = self.primary.as_mut() {
            p.core.handle_ctl(conn, msg, now, &p.lanes, &p.store);
        }
        self.primary_outputs();
    }

    /// A message on a data stream: the lanes' own path ([`on_data`]); a resync is built at once.
    pub(super) fn primary_data(&mut self, conn: u64, msg: PeerMsg) {
        let now = self.clock();
        let limits = self.limits;
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let Some(gen) = p
            .link
            .as_ref()
            .filter(|l| l.conn == conn)
            .map(|l| l.lanes_gen)
        else {
            return;
        };
        match on_data(&p.lanes, &p.store, gen, msg, now) {
            DataStep::Done | DataStep::Superseded => {}
            DataStep::Mismatch { bucket, plan } => {
                if let Some(plan) = plan {
                    let frames = plan.build(&p.store, &limits);
                    p.lanes.finish_resync(&plan, frames, now);
                }
                self.note(format!("digest mismatch on lane {bucket}: resync"));
            }
            DataStep::Failed(e) => self.primary_link_failed(conn, &e),
        }
    }

    /// The machine's timer fired (`proc`: whose; `at` tells a stale timer from the one armed).
    pub(super) fn primary_timer(&mut self, proc: u64, at: Ms) {
        let now = self.clock();
        let Some(p) = self.primary.as_mut().filter(|p| p.proc == proc) else {
            return;
        };
        if p.timer_at != Some(at) {
            return;
        }
        p.timer_at = None;
        p.core.handle_timeout(now, &p.lanes, &p.store);
        self.primary_outputs();
    }

    /// A bucket job of the primary (a bucket of the backup's snapshot) ends: it installs its
    /// bucket now and reports to the machine.
    pub(super) fn primary_job_done(&mut self, proc: u64, id: JobId) {
        let now = self.clock();
        let Some(p) = self.primary.as_mut().filter(|p| p.proc == proc) else {
            return;
        };
        let Some(job) = p.jobs.remove(&id) else {
            return;
        };
        if p.core.live_generation() != Some(id.generation) {
            self.cov.primary_jobs_outlived_link += 1;
        }
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let result = job.apply(&p.store, now);
        p.core.handle_job_done(id, result, now, &p.lanes, &p.store);
        self.primary_outputs();
    }

    /// After every event: lanes that drained are reported to a machine waiting for it.
    pub(super) fn primary_drained(&mut self) {
        let now = self.clock();
        let Some(p) = self.primary.as_mut().filter(|p| p.core.wants_drained()) else {
            return;
        };
        if p.lanes.idle() {
            p.core.handle_drained(now, &p.lanes);
            self.primary_outputs();
        }
    }

    /// A graceful stop of the primary: writes refused at once, then the machine's ordered stop.
    pub(super) fn primary_shutdown(&mut self) {
        let now = self.clock();
        if let Some(p) = self.primary.as_mut() {
            p.stopping = true;
            p.core.handle_stop(now, &p.lanes);
        }
        self.primary_outputs();
    }

    // ---- outputs ----

    /// Carries out everything the machine asked for, and arms its timer.
    pub(super) fn primary_outputs(&mut self) {
        let limits = self.limits;
        loop {
            let now = self.clock();
            let Some(p) = self.primary.as_mut() else {
                return;
            };
            if let Some((conn, msg)) = p.core.poll_transmit() {
                self.send(conn, Side::Primary, 0, &[msg]);
                continue;
            }
            let Some(event) = p.core.poll_event() else {
                break;
            };
            match event {
                PrimaryEvent::Dial => self.dial(),
                PrimaryEvent::Linked { conn } => {
                    if p.core.jobs_outstanding() > 0 {
                        self.cov.primary_openings_held += 1;
                    }
                    self.note(format!("primary links on connection {conn}"));
                }
                PrimaryEvent::Answered { epoch, .. } => {
                    self.note(format!("primary: the backup answered, epoch {epoch}"))
                }
                PrimaryEvent::Settled(settled) => {
                    self.note(format!(
                        "primary settles the lost link's writes: {settled:?}"
                    ));
                    match settled {
                        Settled::Discarded(n) => self.cov.lost_writes_discarded += n as u64,
                        Settled::Resolved(done) => {
                            self.cov.lost_writes_kept += done.kept as u64;
                            self.cov.lost_writes_dropped += done.dropped as u64;
                        }
                    }
                }
                PrimaryEvent::SendSnapshot { conn, buckets } => {
                    let (msgs, _, _) = snapshot_msgs(&p.store, &buckets, &limits, now);
                    p.core.handle_snapshot_sent(conn, Ok(()), now, &p.lanes);
                    self.send(conn, Side::Primary, 0, &msgs);
                }
                PrimaryEvent::Apply { id, job } => {
                    let cost = job.bytes();
                    p.jobs.insert(id, job);
                    self.start_primary_job(id, cost);
                }
                PrimaryEvent::OpenLanes { conn, mark } => self.open_lanes(conn, mark),
                PrimaryEvent::TransferVerified { .. } | PrimaryEvent::DigestChecks(_) => {}
                PrimaryEvent::Close { conn, reason } => {
                    if p.link.as_ref().is_some_and(|l| l.conn == conn) {
                        p.link = None;
                    }
                    self.cut(conn, &reason);
                }
                PrimaryEvent::Lost { conn, cause } => {
                    if p.link.as_ref().is_some_and(|l| l.conn == conn) {
                        p.link = None;
                    }
                    self.note(format!("primary: link {conn} lost: {cause}"));
                }
            }
        }
        self.arm_primary_timer();
    }

    /// Opens the data streams (channels) and the lanes on them, then tells the machine.
    fn open_lanes(&mut self, conn: u64, mark: LaneMark) {
        let streams = self.peer_streams;
        let now = self.clock();
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let Some(link) = p.link.as_mut().filter(|l| l.conn == conn) else {
            return;
        };
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..streams).map(|_| mpsc::channel()).unzip();
        link.lanes_gen = p.lanes.enable_marked(
            BucketId::all()
                .map(|b| txs[b.index() % streams].clone())
                .collect(),
            mark,
        );
        link.lane_rx = rxs;
        p.core.handle_lanes_open(conn, now);
        let pair = self
            .conns
            .get(&conn)
            .map(|c| (c.primary_proc, c.backup_proc));
        self.linked.extend(pair);
        self.note(format!("primary opens the lanes on connection {conn}"));
        // Now and then the primary drops the link just after `Synced` and redials (its ack
        // timeout, a reset): the backup may still hold that `Synced` when the next link is
        // admitted (the superseded link's late message, review F6).
        if self.faults && self.now >= self.quiet_until && self.rng.chance(8) {
            let after = self.rng.range(1, 30);
            self.cov.cuts += 1;
            self.at(after, Event::PrimaryDrop { conn });
        }
    }

    /// Starts a bucket job's virtual run; now and then the link drops while it runs (so that the
    /// next link's opening must wait for it).
    fn start_primary_job(&mut self, id: JobId, cost: u64) {
        let Some(proc) = self.primary.as_ref().map(|p| p.proc) else {
            return;
        };
        let delay = if self.rng.chance(10) {
            self.rng.range(200, 1500)
        } else {
            1 + cost / 2000 + self.rng.range(0, 20)
        };
        self.at(delay, Event::PrimaryJob { proc, id });
        if self.faults && self.now >= self.quiet_until && self.rng.chance(4) {
            if let Some(conn) = self.primary.as_ref().and_then(|p| p.core.live_conn()) {
                let cut = self.rng.range(0, delay);
                self.cov.cuts += 1;
                let cause = "link lost while a primary bucket job runs".to_string();
                self.at(cut, Event::Cut { conn, cause });
            }
        }
    }

    fn arm_primary_timer(&mut self) {
        let base = base();
        let now = self.now;
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let Some(at) = p.core.poll_timeout() else {
            return;
        };
        let at = (at.saturating_duration_since(base).as_millis() as Ms).max(now);
        if p.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        p.timer_at = Some(at);
        let proc = p.proc;
        self.at(at - now, Event::PrimaryTimer { proc, at });
    }

    /// Moves what the lanes queued onto their data streams.
    pub(super) fn flush_lanes(&mut self) {
        let Some(link) = self.primary.as_mut().and_then(|p| p.link.as_mut()) else {
            return;
        };
        let conn = link.conn;
        let mut out = Vec::new();
        for (i, rx) in link.lane_rx.iter_mut().enumerate() {
            let mut buf = BytesMut::new();
            while let Ok(frame) = rx.try_recv() {
                buf.extend_from_slice(&frame);
            }
            if !buf.is_empty() {
                out.push((i + 1, buf.freeze()));
            }
        }
        for (stream, bytes) in out {
            self.send_bytes(conn, Side::Primary, stream, bytes);
        }
    }
}
