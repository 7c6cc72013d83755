//! The primary's side of the simulated pair: dialing, the handshake, its lanes, and the tick
//! that runs its digest checks and ack timeout.

use super::*;

/// Where the primary's side of a link stands.
pub(super) enum PPhase {
    /// Hello sent, waiting for the backup's.
    Hello { ours: Box<PeerHello> },
    /// The backup's hello admitted: waiting for its applied marks (then the transfer).
    Applied {
        ours: Box<PeerHello>,
        theirs: Box<PeerHello>,
        transfer: Transfer,
    },
    /// Snapshot sent, waiting for the verdict.
    AwaitAck,
    /// Receiving the backup's snapshot.
    Receiving(TransferReceiver),
    /// Lanes open.
    Lanes,
}

/// The primary's side of a link.
pub(super) struct PLink {
    pub(super) conn: u64,
    /// The link's epoch, once the hellos agreed on it (the lanes' mark).
    pub(super) epoch: u64,
    pub(super) phase: PPhase,
    pub(super) streams: usize,
    /// Bytes received per stream, not yet decoded.
    pub(super) inbox: HashMap<usize, BytesMut>,
    /// The lane writers' queues, one per data stream.
    pub(super) lane_rx: Vec<mpsc::Receiver<Bytes>>,
    pub(super) next_check: Ms,
}

impl Sim {
    // ---- the primary's driver ----

    pub(super) fn dial(&mut self) {
        self.dial_scheduled = false;
        let Some(p) = self.primary.as_ref() else {
            return;
        };
        if p.link.is_some() {
            return;
        }
        let (Some(b), false) = (self.backup.as_ref(), self.partitioned) else {
            let backoff = self.rng.range(50, 250);
            self.schedule_dial(backoff);
            return;
        };
        let (pproc, bproc) = (p.proc, b.proc);
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
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        p.machine.handle_link_up();
        let ours = hello_of(
            true,
            p.proc,
            0,
            p.machine.current(),
            p.machine.epoch(),
            &p.store,
            base() + Duration::from_millis(self.now),
        );
        p.link = Some(PLink {
            conn,
            epoch: 0,
            phase: PPhase::Hello {
                ours: Box::new(ours.clone()),
            },
            streams: 0,
            inbox: HashMap::new(),
            lane_rx: Vec::new(),
            next_check: 0,
        });
        self.note(format!("primary dials (connection {conn})"));
        self.send(conn, Side::Primary, 0, &[PeerMsg::Hello(Box::new(ours))]);
    }

    pub(super) fn primary_link_lost(&mut self, conn: u64, cause: &str) {
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        if p.link.as_ref().map(|l| l.conn) != Some(conn) {
            return;
        }
        p.link = None;
        p.lanes
            .fail_all(cause, base() + Duration::from_millis(self.now));
        p.machine.handle_link_lost(cause.to_string());
        self.cut(conn, cause);
        let backoff = self.rng.range(50, 250);
        self.schedule_dial(backoff);
    }

    pub(super) fn primary_ctl(&mut self, conn: u64, msg: PeerMsg) {
        let limits = self.limits;
        let now = self.clock();
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let Some(link) = p.link.as_mut().filter(|l| l.conn == conn) else {
            return;
        };
        let phase = std::mem::replace(&mut link.phase, PPhase::AwaitAck);
        match (phase, msg) {
            (PPhase::Lanes, PeerMsg::Goodbye(reason)) => {
                // The backup shuts down: stop taking writes at once, let what is in flight
                // finish (bounded), then end the link.
                link.phase = PPhase::Lanes;
                p.machine
                    .handle_link_lost(format!("backup is shutting down: {reason}"));
                let deadline = self.now + ACK_TIMEOUT_MS;
                self.at(0, Event::PrimaryDrain { conn, deadline });
            }
            (PPhase::Hello { ours }, answer) => {
                match primary_answered(&mut p.machine, &ours, answer) {
                    Ok((theirs, epoch, transfer)) => {
                        link.epoch = epoch;
                        link.phase = PPhase::Applied {
                            ours,
                            theirs,
                            transfer,
                        };
                    }
                    Err(e) => self.primary_link_lost(conn, &e),
                }
            }
            (
                PPhase::Applied {
                    ours,
                    theirs,
                    transfer,
                },
                msg,
            ) => {
                let applied = match applied_marks(msg) {
                    Ok(marks) => marks,
                    Err(e) => return self.primary_link_lost(conn, &e),
                };
                // Before anything of the warm start touches the store (the server holds the
                // store's fence here).
                let settled = settle_lost_writes(&p.lanes, &p.store, &ours, &theirs, &applied, now);
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
                let Some(p) = self.primary.as_mut() else {
                    return;
                };
                let Some(link) = p.link.as_mut() else { return };
                match transfer {
                    Transfer::Nothing => self.open_lanes(conn),
                    Transfer::Send(buckets) => {
                        let (msgs, _, _) = snapshot_msgs(&p.store, &buckets, &limits, now);
                        link.phase = PPhase::AwaitAck;
                        self.send(conn, Side::Primary, 0, &msgs);
                    }
                    Transfer::Receive(_) => {
                        link.phase = PPhase::Receiving(TransferReceiver::default())
                    }
                }
            }
            (PPhase::AwaitAck, PeerMsg::TransferAck { ok: true, .. }) => {
                transfer_ended(&mut p.machine, false);
                self.open_lanes(conn)
            }
            (PPhase::Receiving(mut rx), msg) => match rx.handle(msg, &p.store, now) {
                None => link.phase = PPhase::Receiving(rx),
                Some(verdict) => {
                    self.send(conn, Side::Primary, 0, &[transfer_ack(&verdict)]);
                    match verdict {
                        Ok(()) => {
                            if let Some(p) = self.primary.as_mut() {
                                transfer_ended(&mut p.machine, true);
                            }
                            self.open_lanes(conn);
                        }
                        Err(e) => self.primary_link_lost(conn, &e),
                    }
                }
            },
            (_, other) => self.primary_link_lost(conn, &format!("unexpected {other:?}")),
        }
    }

    pub(super) fn open_lanes(&mut self, conn: u64) {
        let streams = self.peer_streams;
        let now = self.now;
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let Some(link) = p.link.as_mut().filter(|l| l.conn == conn) else {
            return;
        };
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..streams).map(|_| mpsc::channel()).unzip();
        let mark = LaneMark {
            primary_run: p.proc,
            epoch: link.epoch,
            offset: 0,
        };
        p.lanes.enable_marked(
            BucketId::all()
                .map(|b| txs[b.index() % streams].clone())
                .collect(),
            mark,
        );
        link.lane_rx = rxs;
        link.streams = streams;
        link.phase = PPhase::Lanes;
        link.next_check = now + CHECK_EVERY_MS;
        p.machine.handle_synced();
        let pair = self
            .conns
            .get(&conn)
            .map(|c| (c.primary_proc, c.backup_proc));
        self.linked.extend(pair);
        self.note(format!("primary opens the lanes on connection {conn}"));
        self.send(conn, Side::Primary, 0, &[PeerMsg::Synced]);
        self.at(50, Event::Tick);
        // Now and then the primary drops the link just after `Synced` and redials at once (its
        // ack timeout, a reset): the backup may still hold that `Synced` when the next link is
        // admitted (the superseded link's late message, review F6).
        if self.faults && self.now >= self.quiet_until && self.rng.chance(8) {
            let after = self.rng.range(1, 30);
            self.cov.cuts += 1;
            self.at(after, Event::PrimaryDrop { conn });
        }
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

    pub(super) fn primary_data(&mut self, conn: u64, msg: PeerMsg) {
        let now = self.clock();
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        if p.link.as_ref().map(|l| l.conn) != Some(conn) {
            return;
        }
        let failed = match msg {
            PeerMsg::Ack { bucket, offset } => {
                p.lanes.handle_ack(&p.store, bucket, offset, now).err()
            }
            PeerMsg::Mismatch { bucket, .. } => {
                self.note(format!("digest mismatch on lane {bucket}: resync"));
                let Some(p) = self.primary.as_mut() else {
                    return;
                };
                p.lanes.handle_mismatch(&p.store, bucket, now);
                None
            }
            other => Some(format!("unexpected {other:?} on a data stream")),
        };
        if let Some(e) = failed {
            self.primary_link_lost(conn, &e);
        }
    }

    pub(super) fn tick(&mut self) {
        let now = self.now;
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let Some(link) = p.link.as_mut() else { return };
        if !matches!(link.phase, PPhase::Lanes) {
            return;
        }
        let conn = link.conn;
        // The server's rule, on virtual time: something outstanding and no ack progress for the
        // ack timeout (the step timeout while a resync is outstanding).
        let clock = base() + Duration::from_millis(now);
        let (ack, step) = (
            Duration::from_millis(ACK_TIMEOUT_MS),
            Duration::from_millis(STEP_TIMEOUT_MS),
        );
        if let Some((lane, waited)) = p.lanes.stalled(clock, ack, step) {
            let why = format!("no ack from the backup (lane {lane} waited {waited:?})");
            return self.primary_link_lost(conn, &why);
        }
        if now >= link.next_check {
            link.next_check = now + CHECK_EVERY_MS;
            for b in BucketId::all() {
                p.lanes.check(&p.store, b);
            }
        }
        self.at(50, Event::Tick);
    }
}
