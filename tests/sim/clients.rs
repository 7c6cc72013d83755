//! The simulated clients (operations, retries, the recorded history) and the faults the seed
//! throws at the pair (cuts, partitions, crashes, restarts).

use super::*;

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
        }));
        self.attempt(slot);
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
        let Some(p) = self.primary.as_mut() else {
            if maybe_applied {
                return self.unknown(slot, "primary down");
            }
            return self.finish(slot, Observed::Failed("primary down: not sent".into()));
        };
        let outcome = match &kind {
            Kind::Get if !p.machine.reads_allowed() => Observed::Refused("not yet synced".into()),
            Kind::Get => match p.store.get(&key) {
                Some(v) => Observed::Value(v),
                None => Observed::NotFound,
            },
            // The one door for writes: the state machine's `writes_allowed`, as in
            // `Replication::submit`. A refusal says nothing about an earlier attempt.
            _ if !p.machine.writes_allowed() && maybe_applied => {
                return self.unknown(slot, "not in sync")
            }
            _ if !p.machine.writes_allowed() => Observed::Refused("not in sync".into()),
            _ => match p
                .lanes
                .submit_stamped(&p.store, kind.op(key), session, || "not in sync".into())
            {
                Err(Reply::Indeterminate(why)) => return self.unknown(slot, &why),
                Err(Reply::Unavailable(_)) if maybe_applied => {
                    return self.unknown(slot, "unavailable")
                }
                Err(reply) => Observed::from_call(&kind, Ok(reply)),
                Ok(rx) => {
                    p.waiting.push((slot, rx));
                    return;
                }
            },
        };
        self.finish(slot, outcome);
    }

    /// The attempt in `slot` may have been applied: a write is retried with its stamp within
    /// its budget, then left indeterminate.
    pub(super) fn unknown(&mut self, slot: usize, why: &str) {
        let Some(op) = self.pending.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        op.maybe_applied = true;
        if op.stamp.is_some() && self.now - op.invoke < RETRY_BUDGET_MS {
            self.retries += 1;
            let pause = self.rng.range(20, 300);
            self.at(pause, Event::Retry(slot));
        } else {
            self.finish(slot, Observed::Indeterminate(why.to_string()));
        }
    }

    pub(super) fn finish(&mut self, slot: usize, outcome: Observed) {
        let Some(op) = self.pending.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.ops.push(Operation {
            client: op.client,
            key: op.key,
            kind: op.kind,
            invoke: Duration::from_millis(op.invoke),
            complete: Duration::from_millis(self.now),
            outcome,
            server: None,
        });
        let think = self.rng.range(0, 30);
        self.at(think, Event::Client(op.client));
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
                None => self.unknown(slot, "answer dropped"),
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
        let safe = pair.is_some_and(|pb| self.linked.contains(&pb));
        let live_conn = self
            .primary
            .as_ref()
            .and_then(|p| p.link.as_ref())
            .map(|l| l.conn);
        match self.rng.below(10) {
            0..=2 if safe => {
                self.note("FAULT: primary crashes".into());
                self.crash(Side::Primary);
            }
            3..=5 if safe => {
                self.note("FAULT: backup crashes".into());
                self.crash(Side::Backup);
            }
            6 | 7 => {
                self.note("FAULT: partition".into());
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
                    self.cut(c, "connection lost");
                }
            }
        }
        let next = self.rng.range(200, 1500);
        self.at(next, Event::Fault);
    }

    pub(super) fn crash(&mut self, side: Side) {
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
                        self.unknown(slot, "primary crashed");
                    }
                }
            }
            Side::Backup => self.backup = None,
        }
        let back = self.rng.range(50, 1000);
        self.at(back, Event::Restart(side));
    }
}
