//! The fault kinds beyond cuts, partitions and crashes: graceful shutdowns of either server, a
//! second (stale) primary process, entries slipped into the backup's store (digest mismatch →
//! resync), a large bucket behind a slow link; and the server timers the faults need (the session
//! sweep, the backup's read fence) and the state files that survive a restart (the epoch).

use super::*;

/// How long a stopping backup keeps applying before it exits (the server's drain timeout is 5 s;
/// shorter here, so that a stop fits the fault phase).
pub(super) const DRAIN_MS: Ms = 2_000;

impl Sim {
    /// The events of this file.
    pub(super) fn fault_event(&mut self, event: Event) {
        match event {
            Event::Sweep => {
                let now = self.clock();
                for s in [
                    self.primary.as_ref().map(|p| &p.store),
                    self.backup.as_ref().map(|b| &b.store),
                ]
                .into_iter()
                .flatten()
                {
                    s.sessions().sweep(now);
                }
                let period = self.session_limits.max_idle / 4;
                self.at(period.as_millis().max(100) as Ms, Event::Sweep);
            }
            Event::Preload => self.preload(),
            Event::Cut { conn, cause } => self.cut(conn, &cause),
            Event::ZombieExit => self.zombie_exit(),
            Event::Stopping {
                side,
                proc,
                deadline,
            } => self.stopping(side, proc, deadline),
            Event::Exit { side, proc } if self.proc_of(side) == Some(proc) => {
                self.exit(side);
                let back = self.rng.range(50, 1000);
                self.at(back, Event::Restart(side));
            }
            Event::BackupTimer { proc, at } => self.backup_timer(proc, at),
            Event::PrimaryDrop { conn } => {
                self.primary_link_failed(conn, "the primary dropped the link (reset)")
            }
            Event::BackupCtl { conn, msgs } => self.backup_ctl(conn, msgs),
            Event::BackupJob { proc, id } => self.backup_job_done(proc, id),
            _ => {}
        }
    }

    /// Copies each server's epoch to its state file, as the server does before anything else.
    pub(super) fn persist_epochs(&mut self) {
        if let Some(p) = &self.primary {
            self.epoch_files[0] = self.epoch_files[0].max(p.core.machine().epoch());
        }
        if let Some(b) = &self.backup {
            self.epoch_files[1] = self.epoch_files[1].max(b.core.machine().epoch());
        }
    }

    fn proc_of(&self, side: Side) -> Option<u64> {
        match side {
            Side::Primary => self.primary.as_ref().map(|p| p.proc),
            Side::Backup => self.backup.as_ref().map(|b| b.proc),
        }
    }

    // ---- a large bucket ----

    /// Plans the bulk load of one bucket: a few hundred entries of a few KiB, written through
    /// the primary by a loader with a few writes in flight (recorded like any client's): the
    /// bucket's transfers and resyncs then take longer than the ack timeout over the seed's
    /// slow link.
    pub(super) fn plan_preload(&mut self) {
        let bucket = BucketId::new(7).expect("bucket 7");
        let n = self.rng.range(150, 300);
        let mut i = 0u64;
        while (self.load.len() as u64) < n {
            i += 1;
            let key = Bytes::from(format!("fill{i}"));
            if BucketId::of(&key) != bucket {
                continue;
            }
            let size = self.rng.range(600, 1400) as usize;
            self.load.push((key, Bytes::from(vec![b'f'; size])));
        }
        for _ in 0..LOADER_WINDOW {
            self.at(0, Event::Preload);
        }
    }

    /// The loader's next write, once the primary takes writes.
    fn preload(&mut self) {
        if !self.clients_on || self.load.is_empty() {
            return;
        }
        if !self
            .primary
            .as_ref()
            .is_some_and(|p| p.core.machine().writes_allowed())
        {
            return self.at(20, Event::Preload);
        }
        let Some((key, value)) = self.load.pop() else {
            return;
        };
        let slot = self.pending.len();
        self.pending.push(Some(Pending {
            client: LOADER,
            key,
            kind: Kind::Insert(value),
            invoke: self.now,
            stamp: None,
            maybe_applied: false,
            at_backup: false,
        }));
        self.attempt(slot);
    }

    /// A loader's write ended: a refused one is tried again later; the next one goes.
    pub(super) fn loader_done(&mut self, key: &Bytes, kind: &Kind, outcome: &Observed) {
        if let (Observed::Refused(_), Kind::Insert(value)) = (outcome, kind) {
            self.load.insert(0, (key.clone(), value.clone()));
        }
        self.at(1, Event::Preload);
    }

    /// Puts an entry into the linked backup's store that the primary never sent: the next digest
    /// check of its lane mismatches and the primary resyncs the bucket. Only keys no client uses.
    pub(super) fn corrupt_backup(&mut self) {
        let bucket = if self.bandwidth.is_some() || self.rng.chance(30) {
            BucketId::new(7).expect("bucket 7")
        } else {
            BucketId::of(&self.keys[self.rng.below(self.keys.len() as u64) as usize])
        };
        let tag = self.id();
        let Some(b) = self.backup.as_ref() else {
            return;
        };
        if !b.link.as_ref().is_some_and(|l| l.running) {
            return;
        }
        let key = (0u32..)
            .map(|j| Bytes::from(format!("junk{tag}-{j}")))
            .find(|k| BucketId::of(k) == bucket)
            .expect("a key in every bucket");
        let value = Bytes::from_static(b"not from the primary");
        b.store.put(key.clone(), value.clone());
        self.cov.corruptions += 1;
        if self.bandwidth.is_some() && bucket.index() == 7 {
            // Let the resync of the large bucket run its course over the slow link.
            self.quiet_until = self.now + 4_000;
        }
        // Recorded as a write of unknown fate: the key may survive (the primary crashed before
        // the resync removed it, and took the backup's data) or not.
        let at = Duration::from_millis(self.now);
        self.ops.push(Operation {
            client: LOADER,
            key,
            kind: Kind::Insert(value.clone()),
            invoke: at,
            complete: at,
            outcome: Observed::Indeterminate("slipped into the backup's store".into()),
            server: None,
        });
        self.note(format!("FAULT: backup's bucket {bucket} corrupted"));
    }

    // ---- graceful shutdown ----

    /// Starts a graceful stop of `side`, as `quickv shutdown` / SIGTERM does.
    pub(super) fn shutdown(&mut self, side: Side) {
        let deadline;
        let proc;
        match side {
            Side::Primary => {
                let Some(p) = self.primary.as_ref().filter(|p| !p.stopping) else {
                    return;
                };
                // The machine's ordered stop: writes refused at once, a bootstrap to a backup
                // that is not current waited for, writes in flight finished, goodbye (each
                // bounded). The deadline here only catches a machine that never stops.
                proc = p.proc;
                deadline = self.now + DRAIN_MS + 3 * ACK_TIMEOUT_MS;
                self.cov.primary_shutdowns += 1;
                self.primary_shutdown();
            }
            Side::Backup => {
                let Some(b) = self.backup.as_ref().filter(|b| !b.stopping) else {
                    return;
                };
                // The machine tells the primary first, so it refuses writes at once, and keeps
                // applying what is in flight until the primary closes the link or the drain
                // time is up.
                proc = b.proc;
                deadline = self.now + DRAIN_MS;
                self.cov.backup_shutdowns += 1;
                self.backup_shutdown();
            }
        }
        self.note(format!("FAULT: {side:?} shuts down gracefully"));
        self.at(
            0,
            Event::Stopping {
                side,
                proc,
                deadline,
            },
        );
    }

    fn stopping(&mut self, side: Side, proc: u64, deadline: Ms) {
        if self.proc_of(side) != Some(proc) {
            return;
        }
        let done = match side {
            Side::Primary => self.primary.as_ref().is_none_or(|p| p.core.stopped()),
            Side::Backup => self.backup.as_ref().is_none_or(|b| b.core.stopped()),
        };
        if !done && self.now < deadline {
            return self.at(
                5,
                Event::Stopping {
                    side,
                    proc,
                    deadline,
                },
            );
        }
        self.at(CLOSE_GRACE_MS, Event::Exit { side, proc });
    }

    /// The process of `side` ends: its connections close, its memory is gone.
    pub(super) fn exit(&mut self, side: Side) {
        let Some(proc) = self.proc_of(side) else {
            return;
        };
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.alive
                    && match side {
                        Side::Primary => c.primary_proc == proc,
                        Side::Backup => c.backup_proc == proc,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for c in conns {
            self.cut(c, &format!("{side:?} exited"));
        }
        match side {
            Side::Primary => {
                if let Some(p) = self.primary.take() {
                    for (slot, _) in p.waiting {
                        self.lost_answer(slot, "primary exited");
                    }
                }
            }
            Side::Backup => self.backup = None,
        }
    }

    // ---- a second, stale primary process ----

    /// Remembers the primary's data and epoch now: what a primary process frozen at this point
    /// (SIGSTOP, a VM pause) would still hold later.
    pub(super) fn freeze_snapshot(&mut self) {
        if let Some(p) = self
            .primary
            .as_ref()
            .filter(|p| p.core.machine().writes_allowed())
        {
            self.frozen = Some((p.core.machine().epoch(), p.store.dump()));
        }
    }

    /// Starts a primary process that claims current data from an older link (its epoch is below
    /// the backup's): the backup must refuse it, or it would overwrite acknowledged writes.
    pub(super) fn start_zombie(&mut self) {
        let Some((epoch, data)) = self.frozen.clone() else {
            return;
        };
        let backup_epoch = self.backup.as_ref().map(|b| b.core.machine().epoch());
        if self.zombie.is_some() || backup_epoch.is_none_or(|e| epoch >= e) {
            return;
        }
        let store = self.new_store();
        for (k, v) in data {
            store.put(k, v);
        }
        // A machine that is current at `epoch`: it linked then, and has not heard of any newer link.
        let mut machine = Machine::new(true);
        machine.handle_link_up();
        let hello = hello_of(true, 0, 0, true, epoch, &store, self.clock());
        machine.handle_hellos(&hello, &hello, epoch);
        machine.handle_synced();
        machine.handle_link_lost("frozen".into());
        let proc = self.id();
        self.note(format!(
            "FAULT: a stale primary process {proc} (epoch {epoch}, backup at {backup_epoch:?}) dials"
        ));
        let core = PrimaryLink::with_machine(primary::primary_config(proc), machine, self.clock());
        self.zombie = Some(Primary {
            proc,
            core,
            store,
            lanes: Lanes::new(self.limits),
            link: None,
            timer_at: None,
            jobs: HashMap::new(),
            waiting: Vec::new(),
            stopping: false,
        });
        self.cov.stale_primaries += 1;
        self.as_zombie(|sim| sim.primary_outputs());
        let life = self.rng.range(300, 2500);
        self.at(life, Event::ZombieExit);
    }

    pub(super) fn zombie_conn(&self, conn: u64) -> bool {
        let proc = self.zombie.as_ref().map(|z| z.proc);
        proc.is_some() && self.conns.get(&conn).map(|c| c.primary_proc) == proc
    }

    /// Runs `f` with the stale process in the primary's place (its driver is the primary's).
    pub(super) fn as_zombie(&mut self, f: impl FnOnce(&mut Sim)) {
        let Some(zombie) = self.zombie.take() else {
            return;
        };
        let real = self.primary.replace(zombie);
        f(self);
        self.zombie = std::mem::replace(&mut self.primary, real);
    }

    pub(super) fn zombie_exit(&mut self) {
        let Some(z) = self.zombie.take() else {
            return;
        };
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive && c.primary_proc == z.proc)
            .map(|(id, _)| *id)
            .collect();
        for c in conns {
            self.cut(c, "the stale primary exited");
        }
    }
}
