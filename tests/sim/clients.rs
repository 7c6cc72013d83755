//! The simulated clients (operations, retries, the recorded history) and the faults the seed
//! throws at the pair (cuts, partitions, crashes, restarts; the others are in `faults.rs`).

use quickv_core::store::sessions::Lookup;
use quickv_server::replication::oneshot::via_oneshot;

use super::*;

/// What the primary will do with a retry, read before it is submitted.
#[derive(Clone, Copy)]
enum RetryPath {
    /// Its original still waits for its ack: it queues behind it for the same answer.
    InFlight,
    /// No record and nothing in flight: decided against the store like a new write.
    Afresh,
    /// The table has its answer.
    Answered,
    /// Its record may be gone: `SessionExpired`.
    Expired,
}

impl Sim {
    // ---- clients ----

    pub(super) fn client_op(&mut self, client: u32) {
        if !self.clients_on {
            return;
        }
        let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
        self.values += 1;
        let size = if self.rng.chance(10) {
            self.rng.range(1000, 4000)
        } else {
            self.rng.range(1, 40)
        } as usize;
        let mut value = format!("c{client}v{}-", self.values).into_bytes();
        value.resize(size.max(value.len()), b'.');
        let value = Bytes::from(value);
        let kind = match self.rng.below(8) {
            0 | 1 => Kind::Insert(value),
            2 | 3 => Kind::Update(value),
            4 => Kind::Delete,
            _ => Kind::Get,
        };
        let at_backup = matches!(kind, Kind::Get) && self.rng.chance(30);
        let stamp = (!matches!(kind, Kind::Get)).then(|| {
            let seq = &mut self.write_seqs[client as usize];
            *seq += 1;
            WriteStamp::new(u64::from(client) + 1, *seq)
        });
        let slot = self.pending.len();
        self.pending.push(Some(Pending {
            client,
            key: key.clone(),
            kind: kind.clone(),
            invoke: self.now,
            stamp,
            maybe_applied: false,
            at_backup,
        }));
        if at_backup {
            return self.read_at_backup(slot, &key);
        }
        self.attempt(slot);
    }

    /// A read sent to the backup: answered while it is current and not fenced, else refused.
    fn read_at_backup(&mut self, slot: usize, key: &Bytes) {
        let outcome = match self.backup.as_ref() {
            None => Observed::Failed("backup down: not sent".into()),
            Some(b) if !b.core.machine().reads_allowed() => {
                self.cov.backup_reads_refused += 1;
                Observed::Refused(b.core.machine().read_refusal().unwrap_or("refused").into())
            }
            Some(b) => {
                self.cov.backup_reads += 1;
                match b.store.get(key) {
                    Some(v) => Observed::Value(v),
                    None => Observed::NotFound,
                }
            }
        };
        self.finish(slot, outcome);
    }

    /// Which way the primary will take a retry of `slot` (see [`RetryPath`]).
    fn retry_path(&mut self, slot: usize, write: &SessionWrite, key: &Bytes) -> Option<RetryPath> {
        let p = self
            .primary
            .as_ref()
            .filter(|p| p.core.machine().writes_allowed())?;
        let proc = p.proc;
        let store = p.store.clone();
        let mut in_flight = false;
        self.orphans.retain_mut(|(s, owner, rx)| {
            let pending = matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
            if *s == slot && *owner == proc && pending {
                in_flight = true;
            }
            pending
        });
        if in_flight {
            return Some(RetryPath::InFlight);
        }
        Some(
            match store
                .sessions()
                .lookup(BucketId::of(key), write, self.clock())
            {
                Lookup::Fresh => RetryPath::Afresh,
                Lookup::Answered(_) => RetryPath::Answered,
                Lookup::Expired(_) => RetryPath::Expired,
            },
        )
    }

    fn count_retry(&mut self, path: Option<RetryPath>) {
        match path {
            Some(RetryPath::InFlight) => self.cov.retries_in_flight += 1,
            Some(RetryPath::Afresh) => self.cov.retries_afresh += 1,
            Some(RetryPath::Answered) => self.cov.retries_answered += 1,
            Some(RetryPath::Expired) => self.cov.retries_expired += 1,
            None => {}
        }
    }

    /// Sends (or resends) the operation in `slot` to the primary.
    pub(super) fn attempt(&mut self, slot: usize) {
        let Some(op) = self.pending.get(slot).and_then(Option::as_ref) else {
            return;
        };
        let (key, kind, maybe_applied) = (op.key.clone(), op.kind.clone(), op.maybe_applied);
        let session = op.stamp.map(|stamp| SessionWrite {
            stamp,
            age_ms: u32::try_from(self.now - op.invoke).unwrap_or(u32::MAX),
        });
        let path = match (&session, maybe_applied) {
            (Some(write), true) => self.retry_path(slot, write, &key),
            _ => None,
        };
        let now = self.clock();
        let Some(p) = self.primary.as_mut() else {
            if maybe_applied {
                return self.unknown(slot, "primary down");
            }
            return self.finish(slot, Observed::Failed("primary down: not sent".into()));
        };
        let outcome = match &kind {
            Kind::Get if !p.core.machine().reads_allowed() => {
                Observed::Refused("not yet synced".into())
            }
            // The server's read at the primary (`Replication::read`): the dirty check waits for
            // the write in flight on the key; an unresolved write's key is refused.
            Kind::Get => match via_oneshot(|to| p.lanes.read(&p.store, &key, to, || now)) {
                Err(reply) => Observed::from_call(&kind, Ok(reply)),
                Ok(rx) => {
                    p.waiting.push((slot, rx));
                    self.cov.primary_reads_waited += 1;
                    return;
                }
            },
            // The one door for writes: the state machine's `writes_allowed`, as in
            // `Replication::submit`. A refusal says nothing about an earlier attempt.
            _ if !p.core.machine().writes_allowed() && maybe_applied => {
                return self.unknown(slot, "not in sync")
            }
            _ if !p.core.machine().writes_allowed() => Observed::Refused("not in sync".into()),
            _ => match via_oneshot(|to| {
                let refusal = || "not in sync".to_string();
                p.lanes
                    .submit(&p.store, kind.op(key), session, refusal, to, now)
            }) {
                Err(Reply::Indeterminate(why)) => return self.unknown(slot, &why),
                Err(Reply::Unavailable(_)) if maybe_applied => {
                    return self.unknown(slot, "unavailable")
                }
                Err(reply) => {
                    self.count_retry(path);
                    Observed::from_call(&kind, Ok(reply))
                }
                Ok(rx) => {
                    let proc = p.proc;
                    self.count_retry(path);
                    if session.is_some() && self.faults && self.rng.chance(4) {
                        // The client's connection drops with the write in flight: it reconnects
                        // and resends at once, while the original still waits for its ack.
                        self.cov.client_drops += 1;
                        self.orphans.push((slot, proc, rx));
                        return self.resend(slot, "client connection lost", 0, 10);
                    }
                    if let Some(p) = self.primary.as_mut() {
                        p.waiting.push((slot, rx));
                    }
                    return;
                }
            },
        };
        self.finish(slot, outcome);
    }

    /// The primary went away with the operation in `slot` waiting: a write may have been applied
    /// ([`Sim::unknown`]); a read waiting for its key's ack simply failed.
    pub(super) fn lost_answer(&mut self, slot: usize, why: &str) {
        let write = self
            .pending
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|op| op.kind.is_write());
        match write {
            true => self.unknown(slot, why),
            false => self.finish(slot, Observed::Failed(why.into())),
        }
    }

    /// The attempt in `slot` may have been applied: a write is retried with its stamp within
    /// its budget, then left indeterminate.
    pub(super) fn unknown(&mut self, slot: usize, why: &str) {
        self.resend(slot, why, 20, 300)
    }

    /// [`Sim::unknown`], resent after a pause between `lo` and `hi` ms.
    fn resend(&mut self, slot: usize, why: &str, lo: Ms, hi: Ms) {
        let Some(op) = self.pending.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        op.maybe_applied = true;
        if op.stamp.is_some() && self.now - op.invoke < RETRY_BUDGET_MS {
            self.cov.retries += 1;
            let pause = self.rng.range(lo, hi);
            self.at(pause, Event::Retry(slot));
        } else {
            self.finish(slot, Observed::Indeterminate(why.to_string()));
        }
    }

    pub(super) fn finish(&mut self, slot: usize, outcome: Observed) {
        let Some(op) = self.pending.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let done = Operation {
            client: op.client,
            key: op.key,
            kind: op.kind,
            invoke: Duration::from_millis(op.invoke),
            complete: Duration::from_millis(self.now),
            outcome,
            server: Some(match op.at_backup {
                true => quickv::history::Server::Backup,
                false => quickv::history::Server::Primary,
            }),
        };
        if op.client == LOADER {
            self.loader_done(&done.key, &done.kind, &done.outcome);
        }
        if op.at_backup {
            self.backup_ops.push(done);
        } else {
            self.ops.push(done);
        }
        if op.client != LOADER {
            let think = self.rng.range(0, 30);
            self.at(think, Event::Client(op.client));
        }
    }

    /// Answers whatever the lanes decided.
    pub(super) fn collect_answers(&mut self) {
        let Some(p) = self.primary.as_mut() else {
            return;
        };
        let mut done = Vec::new();
        p.waiting.retain_mut(|(slot, rx)| match rx.try_recv() {
            Ok(reply) => {
                done.push((*slot, Some(reply)));
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            Err(oneshot::error::TryRecvError::Closed) => {
                done.push((*slot, None));
                false
            }
        });
        for (slot, reply) in done {
            let kind = match self.pending.get(slot).and_then(Option::as_ref) {
                Some(p) => p.kind.clone(),
                None => continue,
            };
            match reply {
                Some(Reply::Indeterminate(why)) => self.unknown(slot, &why),
                Some(r) => self.finish(slot, Observed::from_call(&kind, Ok(r))),
                None => self.lost_answer(slot, "answer dropped"),
            }
        }
    }

    // ---- faults ----

    pub(super) fn fault(&mut self) {
        if !self.faults {
            return;
        }
        let pair = match (&self.primary, &self.backup) {
            (Some(p), Some(b)) => Some((p.proc, b.proc)),
            _ => None,
        };
        // Either server may die once the pair linked, but not while the other one is going away.
        let stopping = self.primary.as_ref().is_some_and(|p| p.stopping)
            || self.backup.as_ref().is_some_and(|b| b.stopping);
        let safe = !stopping && pair.is_some_and(|pb| self.linked.contains(&pb));
        let live_conn = self.primary.as_ref().and_then(|p| p.core.live_conn());
        self.freeze_snapshot_sometimes();
        match self.rng.below(100) {
            _ if self.now < self.quiet_until => {}
            // The large bucket's first fault: a mismatch, so its resync outlasts the ack timeout.
            _ if self.bandwidth.is_some() && self.cov.corruptions == 0 => self.corrupt_backup(),
            0..=14 if safe => {
                self.note("FAULT: primary crashes".into());
                self.crash(Side::Primary);
            }
            15..=29 if safe => {
                self.note("FAULT: backup crashes".into());
                self.crash(Side::Backup);
            }
            30..=36 if safe => self.shutdown(Side::Primary),
            37..=43 if safe => self.shutdown(Side::Backup),
            44..=53 => self.start_zombie(),
            54..=65 => self.corrupt_backup(),
            66..=81 => {
                self.note("FAULT: partition".into());
                self.cov.partitions += 1;
                self.partitioned = true;
                let live: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.alive)
                    .map(|(id, _)| *id)
                    .collect();
                for c in live {
                    self.cut(c, "partition");
                }
                let heal = self.rng.range(100, 1500);
                self.at(heal, Event::Heal);
            }
            _ => {
                if let Some(c) = live_conn {
                    self.note("FAULT: connection lost".into());
                    self.cov.cuts += 1;
                    self.cut(c, "connection lost");
                }
            }
        }
        let next = self.rng.range(200, 1500);
        self.at(next, Event::Fault);
    }

    /// Now and then remembers the primary's state for a later stale process.
    fn freeze_snapshot_sometimes(&mut self) {
        if self.frozen.is_none() || self.rng.chance(20) {
            self.freeze_snapshot();
        }
    }

    pub(super) fn crash(&mut self, side: Side) {
        self.cov.crashes += 1;
        let live: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive)
            .map(|(id, _)| *id)
            .collect();
        for c in live {
            self.cut(c, &format!("{side:?} crashed"));
        }
        match side {
            Side::Primary => {
                if let Some(p) = self.primary.take() {
                    for (slot, _) in p.waiting {
                        self.lost_answer(slot, "primary crashed");
                    }
                }
            }
            Side::Backup => self.backup = None,
        }
        let back = self.rng.range(50, 1000);
        self.at(back, Event::Restart(side));
    }
}
