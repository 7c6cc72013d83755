//! The simulated network: bytes sent on a connection's streams, delivered after a seeded delay
//! (in order per stream, overtaking across streams), cuts, and delivery to each side's driver.

use super::*;

impl Sim {
    // ---- network ----

    /// Sends already encoded frames on a stream of `conn`, in order with what that stream carried.
    pub(super) fn send_bytes(&mut self, conn: u64, from: Side, stream: usize, bytes: Bytes) {
        let to = match from {
            Side::Primary => Side::Backup,
            Side::Backup => Side::Primary,
        };
        // Now and then a long delay (a lost packet, a busy peer); on a slow link the bandwidth
        // is the delay.
        let delay = if self.bandwidth.is_none() && self.rng.chance(8) {
            self.rng.range(100, 900)
        } else {
            self.rng.range(1, 15)
        };
        let now = self.now;
        let bandwidth = self.bandwidth;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        // A slow link streams a batch: each frame arrives once its bytes have crossed at the
        // link's bandwidth (so the backup applies and acks a long batch as it comes in), and the
        // stream's later bytes queue behind it.
        let last = c.last.entry((from, stream)).or_insert(0);
        let mut deliveries = Vec::new();
        match bandwidth {
            None => {
                let when = (now + delay).max(*last);
                *last = when;
                deliveries.push((when, bytes));
            }
            Some(bytes_per_ms) => {
                let mut crossed = 0u64;
                for (frame, cost) in frames_and_costs(bytes, &self.limits) {
                    crossed += cost;
                    let when = (now + delay + crossed / bytes_per_ms).max(*last);
                    *last = when;
                    deliveries.push((when, frame));
                }
            }
        }
        for (when, part) in deliveries {
            self.at(
                when - now,
                Event::Deliver {
                    conn,
                    to,
                    stream,
                    bytes: part,
                },
            );
        }
    }

    pub(super) fn send(&mut self, conn: u64, from: Side, stream: usize, msgs: &[PeerMsg]) {
        let mut out = BytesMut::new();
        for m in msgs {
            m.encode(&mut out);
        }
        self.send_bytes(conn, from, stream, out.freeze());
    }

    /// Cuts a connection: what is in flight is lost; each side notices after its own delay.
    pub(super) fn cut(&mut self, conn: u64, cause: &str) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        c.alive = false;
        self.note(format!("connection {conn} cut: {cause}"));
        for side in [Side::Primary, Side::Backup] {
            let delay = self.rng.range(1, 1200);
            self.at(
                delay,
                Event::LinkDown {
                    conn,
                    side,
                    cause: cause.to_string(),
                },
            );
        }
    }

    // ---- resyncs ----

    /// Before the primary takes a lane message: counts a mismatch (returns its lane, to note the
    /// resync it starts) and an ack that covers a watched resync.
    fn watch_resync(&mut self, conn: u64, msg: &PeerMsg) -> Option<BucketId> {
        match msg {
            PeerMsg::Mismatch { bucket, .. } => {
                self.cov.mismatches += 1;
                Some(*bucket)
            }
            PeerMsg::Ack { bucket, offset } => {
                let key = (conn, bucket.index());
                if let Some(&(since, resync)) = self.resync_watch.get(&key) {
                    if *offset >= resync {
                        self.resync_watch.remove(&key);
                        self.cov.resyncs += 1;
                        if self.now - since > ACK_TIMEOUT_MS {
                            self.cov.slow_resyncs += 1;
                        }
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// After a mismatch: the offset of the resync it queued, if any, is watched for its ack.
    fn watched_resync(&mut self, conn: u64, lane: Option<BucketId>) {
        let Some(b) = lane else { return };
        let Some(p) = self.primary.as_ref() else {
            return;
        };
        let offset = p.lanes.status()[b.index()].offset;
        let now = self.now;
        self.resync_watch
            .entry((conn, b.index()))
            .or_insert((now, offset));
    }

    // ---- delivery ----

    pub(super) fn deliver(&mut self, conn: u64, to: Side, stream: usize, bytes: Bytes) {
        if !self.conns.get(&conn).is_some_and(|c| c.alive) {
            return;
        }
        let limits = self.limits;
        match to {
            Side::Backup => {
                if self.backup.is_none() {
                    return;
                }
                if stream == 0 {
                    // Each send is whole frames: decoded at once, handed over after the lag.
                    self.backup_ctl_bytes(conn, BytesMut::from(&bytes[..]));
                } else {
                    self.backup_data(conn, stream, &bytes);
                }
            }
            Side::Primary => {
                let Some(p) = self.primary.as_mut() else {
                    return;
                };
                let Some(link) = p.link.as_mut().filter(|l| l.conn == conn) else {
                    return;
                };
                let mut buf = std::mem::take(link.inbox.entry(stream).or_default());
                buf.extend_from_slice(&bytes);
                loop {
                    match PeerMsg::decode(&mut buf, &limits) {
                        Ok(Some(msg)) if stream == 0 => {
                            if matches!(&msg, PeerMsg::Goodbye(r) if Refusal::is_stale(r)) {
                                self.cov.stale_refusals += 1;
                            }
                            self.primary_ctl(conn, msg)
                        }
                        Ok(Some(msg)) => {
                            let watch = self.watch_resync(conn, &msg);
                            self.primary_data(conn, msg);
                            self.watched_resync(conn, watch);
                        }
                        Ok(None) => break,
                        Err(e) => return self.primary_link_lost(conn, &e.to_string()),
                    }
                    if !self.conns.get(&conn).is_some_and(|c| c.alive) {
                        return;
                    }
                }
                if let Some(l) = self
                    .primary
                    .as_mut()
                    .and_then(|p| p.link.as_mut())
                    .filter(|l| l.conn == conn)
                {
                    l.inbox.insert(stream, buf);
                }
            }
        }
    }
}

/// The frames of a batch, each with what it costs on a slow link: its length, but for a chunk of
/// bucket entries the entries' own lengths. How the store's (randomly ordered) entries fall into
/// chunks then changes no arrival time that matters (a bucket is installed at its end frame), so
/// a seed replays exactly.
fn frames_and_costs(mut bytes: Bytes, limits: &Limits) -> Vec<(Bytes, u64)> {
    let whole = bytes.clone();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match PeerMsg::decode(&mut buf, limits) {
            Ok(Some(msg)) => {
                let len = before - buf.len();
                let frame = bytes.split_to(len);
                let cost = match &msg {
                    PeerMsg::BucketChunk(entries) => entries
                        .iter()
                        .map(|(k, v)| (k.len() + v.len() + 8) as u64)
                        .sum(),
                    _ => len as u64,
                };
                out.push((frame, cost));
            }
            Ok(None) if buf.is_empty() => return out,
            // Not whole frames (never sent so): one piece at its length.
            _ => return vec![(whole.clone(), whole.len() as u64)],
        }
    }
}
