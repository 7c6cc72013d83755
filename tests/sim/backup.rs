//! The backup's side of the simulated pair: the handshake, applying a bootstrap and lane writes,
//! and losing the link.

use super::*;

impl Sim {
    // ---- the backup's driver ----

    pub(super) fn backup_ctl(&mut self, conn: u64, msg: PeerMsg) {
        let now = self.clock();
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let current = b.link.as_ref().map(|l| l.conn);
        if current != Some(conn) {
            // A new connection: only a verified hello may replace the live link.
            let PeerMsg::Hello(theirs) = msg else {
                return self.cut(conn, "expected the primary's hello");
            };
            let view = PeerHello {
                primary: false,
                run_id: b.proc,
                pair: 0,
                epoch: b.machine.epoch(),
                synced: b.machine.current(),
                keys: 0,
                digests: Default::default(),
            };
            let epoch = match admit(&theirs, &view) {
                Ok(e) => e,
                Err(refusal) => {
                    let reason = refusal.to_string();
                    self.note(format!("backup refuses connection {conn}: {reason}"));
                    self.send(conn, Side::Backup, 0, &[PeerMsg::Goodbye(reason.clone())]);
                    // Closed after a grace, so that the goodbye reaches the refused primary.
                    let cause = reason;
                    return self.at(CLOSE_GRACE_MS, Event::Cut { conn, cause });
                }
            };
            b.applying_link += 1;
            let generation = b.applying_link;
            if let Some(old) = b.link.take() {
                b.machine.handle_link_lost("superseded".into());
                self.cut(old.conn, "superseded by a newer link");
            }
            let Some(b) = self.backup.as_mut() else {
                return;
            };
            b.machine.handle_link_up();
            let ours = hello_of(
                false,
                b.proc,
                0,
                b.machine.current(),
                b.machine.epoch(),
                &b.store,
                now,
            );
            let (plan, transfer) = backup_plan(&mut b.machine, &theirs, &ours, epoch);
            let phase = match transfer {
                Transfer::Nothing => BPhase::Running,
                Transfer::Receive(_) => BPhase::Receiving(TransferReceiver::default()),
                Transfer::Send(_) => BPhase::AwaitAck,
            };
            // The marks are read after the admission fenced the older links' appliers.
            let mut msgs = Vec::from(backup_opening(ours, b.marks));
            if matches!(phase, BPhase::AwaitAck) {
                msgs.extend(snapshot_msgs(&b.store, &plan.buckets, &self.limits, now).0);
            }
            b.link = Some(BLink {
                conn,
                generation,
                phase,
                inbox: HashMap::new(),
                appliers: HashMap::new(),
                mark: LaneMark {
                    primary_run: theirs.run_id,
                    epoch,
                    offset: 0,
                },
            });
            self.note(format!("backup admits connection {conn} at epoch {epoch}"));
            self.send(conn, Side::Backup, 0, &msgs);
            return self.backup_drain(conn);
        }
        let Some(link) = b.link.as_mut() else { return };
        let phase = std::mem::replace(&mut link.phase, BPhase::Running);
        match (phase, msg) {
            (BPhase::Receiving(mut rx), msg) => match rx.handle(msg, &b.store, now) {
                None => link.phase = BPhase::Receiving(rx),
                Some(verdict) => {
                    if verdict.is_ok() {
                        transfer_ended(&mut b.machine, true);
                    }
                    self.send(conn, Side::Backup, 0, &[transfer_ack(&verdict)]);
                    match verdict {
                        Ok(()) => self.backup_drain(conn),
                        Err(e) => self.cut(conn, &e),
                    }
                }
            },
            (BPhase::AwaitAck, PeerMsg::TransferAck { ok: true, .. }) => {
                transfer_ended(&mut b.machine, false);
                self.backup_drain(conn)
            }
            (BPhase::Running, PeerMsg::Synced) => b.machine.handle_synced(),
            (_, other) => self.cut(conn, &format!("unexpected {other:?} on the control stream")),
        }
    }

    /// Applies what the data streams buffered, once the link runs (the real backup accepts the
    /// data streams only after the transfer, so earlier bytes wait in QUIC's buffers).
    pub(super) fn backup_drain(&mut self, conn: u64) {
        let limits = self.limits;
        let now = self.clock();
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let Some(link) = b.link.as_mut().filter(|l| l.conn == conn) else {
            return;
        };
        if !matches!(link.phase, BPhase::Running) {
            return;
        }
        let mut replies = Vec::new();
        let mut failure = None;
        let mut streams: Vec<usize> = link.inbox.keys().copied().filter(|s| *s > 0).collect();
        streams.sort_unstable(); // the map's order is random: a seed must replay exactly
        for stream in streams {
            let Some(buf) = link.inbox.get_mut(&stream) else {
                continue;
            };
            let applier = link.appliers.entry(stream).or_default();
            let live = || b.applying_link == link.generation;
            let mut out = Vec::new();
            loop {
                let pass = apply_marked(
                    applier,
                    &mut b.marks,
                    link.mark,
                    buf,
                    &limits,
                    &b.store,
                    b.repl.counters(),
                    now,
                    live,
                    &mut out,
                );
                match pass.and_then(|pass| match pass {
                    // The server installs it off its runtime, under the store's fence; here at once.
                    Pass::Resync(job) => job.apply(&b.store, b.repl.counters()).map(|()| true),
                    Pass::Done => Ok(false),
                }) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            applier.acks(&mut out);
            if !out.is_empty() {
                replies.push((stream, out));
            }
            if failure.is_some() {
                break;
            }
        }
        for (stream, msgs) in replies {
            self.send(conn, Side::Backup, stream, &msgs);
        }
        if let Some(e) = failure {
            self.note(format!("backup: data stream failed: {e}"));
            self.cut(conn, &e);
        }
    }

    pub(super) fn backup_link_lost(&mut self, conn: u64, cause: &str) {
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        if b.link.as_ref().map(|l| l.conn) == Some(conn) {
            b.link = None;
            b.machine.handle_link_lost(cause.to_string());
        }
    }
}
