//! The golden scripts' primary link ([`crate::primary_link::PrimaryLink`]), with its own store and
//! lanes: connections are numbered by the script, every output the machine produces is printed
//! after each command, bucket jobs run only when the script says so, and the lanes are opened
//! only when the script says the driver did.
//!
//! | command | does |
//! |---|---|
//! | `primary connected C`, `primary dial-failed` | the driver's dial ended |
//! | `primary answer C b:FIELDS` | C's backup answers: its hello (FIELDS as in `hellos`), then its applied marks (none) |
//! | `primary ctl C goodbye`, `… transfer-ack`, `… transfer-nack` | a later control message on C |
//! | `primary ctl C snapshot` | C's backup sends a snapshot of `a`, `b`, `c` (every bucket, `TransferDone` last) |
//! | `primary snapshot-sent C`, `primary lanes-open C` | the driver wrote our snapshot / opened the data streams and the lanes |
//! | `primary closed C` | C is gone |
//! | `primary job-done`, `primary jobs-done` | bucket jobs finish (as for the backup) |
//! | `primary write K V` | a client write on the lanes |
//! | `primary ack K` | the backup acks everything sent on K's lane (the driver then reports drained lanes) |
//! | `primary wait MS` | time passes; the machine's timers run |
//! | `primary shutdown`, `primary stop` | a graceful stop begins (writes refused) / ends the link in order |
//! | `primary restart` | the process restarts: empty store, new lanes, the persisted epoch |
//! | `primary status` | state, epoch, live connection, jobs, late inputs, keys, stop, next timer |

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quickv_proto::peer::{LaneMark, PeerMsg};
use quickv_proto::{Op, Reply};

use crate::lanes::Lanes;
use crate::primary_link::{JobId, PrimaryConfig, PrimaryEvent, PrimaryLink};
use crate::reply::ReplyTo;
use crate::store::{BucketId, Store, BUCKETS};
use crate::transfer::{bucket_msgs, BucketJob};

/// The primary of the scripts.
pub(super) struct World {
    link: PrimaryLink,
    lanes: Lanes,
    store: Store,
    /// Bucket jobs handed out and not yet finished, oldest first.
    jobs: VecDeque<(JobId, BucketJob)>,
    /// The lanes' mark asked for by the latest `OpenLanes`.
    mark: Option<LaneMark>,
    /// The lanes' queued frames (kept open so writes queue).
    _to_backup: Vec<mpsc::Receiver<Bytes>>,
    /// Answers of queued writes.
    waiting: Vec<(String, mpsc::Receiver<Reply>)>,
}

fn config() -> PrimaryConfig {
    PrimaryConfig {
        run_id: 1,
        pair: 7,
        ack_timeout: Duration::from_millis(1000),
        step: Duration::from_millis(10_000),
        check_every: Duration::from_millis(2000),
        drain: Duration::from_millis(5000),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(250),
    }
}

impl World {
    pub(super) fn new(now: Instant) -> World {
        World {
            link: PrimaryLink::new(config(), 0, now),
            lanes: Lanes::default(),
            store: Store::new(),
            jobs: VecDeque::new(),
            mark: None,
            _to_backup: Vec::new(),
            waiting: Vec::new(),
        }
    }

    /// Runs a `primary …` command; false if it is not one.
    pub(super) fn run(&mut self, words: &[&str], now: &mut Instant, out: &mut String) -> bool {
        let conn = |w: &str| -> u64 { w.parse().expect("connection number") };
        let (lanes, store) = (&self.lanes, &self.store);
        match words {
            ["primary", "connected", c] => self.link.handle_connected(conn(c), *now, lanes, store),
            ["primary", "dial-failed"] => self.link.handle_dial_failed(*now),
            ["primary", "answer", c, b] => {
                let (hello, _) = super::hello(false, b.trim_start_matches("b:"));
                let marks = PeerMsg::Applied(Box::new([LaneMark::default(); BUCKETS]));
                for msg in [PeerMsg::Hello(Box::new(hello)), marks] {
                    self.link.handle_ctl(conn(c), msg, *now, lanes, store);
                }
            }
            ["primary", "ctl", c, "snapshot"] => {
                let backup = Store::new();
                for k in ["a", "b", "c"] {
                    backup.put(Bytes::from(k), Bytes::from("1"));
                }
                let mut msgs = Vec::new();
                for b in BucketId::all() {
                    msgs.extend(bucket_msgs(&backup, b, &Default::default(), *now).0);
                }
                msgs.push(PeerMsg::TransferDone);
                for m in msgs {
                    self.link.handle_ctl(conn(c), m, *now, lanes, store);
                }
            }
            ["primary", "ctl", c, msg] => {
                let msg = match *msg {
                    "goodbye" => PeerMsg::Goodbye("backup shutting down".into()),
                    "transfer-ack" => PeerMsg::TransferAck {
                        ok: true,
                        reason: String::new(),
                    },
                    "transfer-nack" => PeerMsg::TransferAck {
                        ok: false,
                        reason: "bucket 3: digest differs".into(),
                    },
                    other => panic!("unknown control message {other}"),
                };
                self.link.handle_ctl(conn(c), msg, *now, lanes, store);
            }
            ["primary", "snapshot-sent", c] => {
                self.link.handle_snapshot_sent(conn(c), Ok(()), *now, lanes)
            }
            ["primary", "lanes-open", c] => {
                let (txs, rxs): (Vec<_>, Vec<_>) =
                    (0..BUCKETS).map(|_| mpsc::channel::<Bytes>()).unzip();
                let mark = self.mark.take().expect("the machine asked for the lanes");
                let g = self.lanes.enable_marked(txs, mark);
                self._to_backup = rxs;
                let _ = writeln!(out, "lanes open (generation {g})");
                self.link.handle_lanes_open(conn(c), *now);
            }
            ["primary", "closed", c] => {
                self.link
                    .handle_conn_closed(conn(c), "connection lost".into(), *now, lanes)
            }
            ["primary", "job-done"] => {
                let (id, job) = self.jobs.pop_front().expect("a job running");
                let result = job.apply(&self.store, *now);
                let _ = writeln!(out, "job {}.{} done: {result:?}", id.generation, id.seq);
                self.link
                    .handle_job_done(id, result, *now, &self.lanes, &self.store);
            }
            ["primary", "jobs-done"] => {
                let (mut n, mut keys) = (0, 0);
                while let Some((id, job)) = self.jobs.pop_front() {
                    let result = job.apply(&self.store, *now);
                    n += 1;
                    keys += result.as_ref().map_or(0, |k| *k);
                    self.link
                        .handle_job_done(id, result, *now, &self.lanes, &self.store);
                    while let Some(PrimaryEvent::Apply { id, job }) = self.link.poll_event() {
                        self.jobs.push_back((id, job));
                    }
                }
                let _ = writeln!(out, "{n} jobs done, {keys} keys installed");
            }
            ["primary", "write", k, v] => self.write(k, v, *now, out),
            ["primary", "ack", k] => {
                let b = BucketId::of(k.as_bytes());
                let offset = self.lanes.status()[b.index()].offset;
                let r = self.lanes.handle_ack(&self.store, b, offset, *now);
                let _ = writeln!(out, "ack of lane {b} up to {offset}: {r:?}");
                self.answers(out);
                if self.link.wants_drained() {
                    self.link.handle_drained(*now, &self.lanes);
                }
            }
            ["primary", "wait", ms] => {
                *now += Duration::from_millis(ms.parse().expect("ms"));
                self.link.handle_timeout(*now, lanes, store);
                self.answers(out);
            }
            ["primary", "shutdown"] => self.link.handle_shutdown(),
            ["primary", "stop"] => self.link.handle_stop(*now, lanes),
            ["primary", "restart"] => {
                let epoch = self.link.machine().epoch();
                *self = World::new(*now);
                self.link.restore_epoch(epoch);
                let _ = writeln!(out, "restarted empty at epoch {epoch}");
            }
            ["primary", "status"] => self.status(*now, out),
            _ => return false,
        }
        self.outputs(out);
        true
    }

    fn write(&mut self, k: &str, v: &str, now: Instant, out: &mut String) {
        let op = Op::Insert {
            key: Bytes::from(k.to_string()),
            value: Bytes::from(v.to_string()),
        };
        let (tx, rx) = mpsc::channel();
        let to = move || {
            ReplyTo::Once(Box::new(move |reply| {
                let _ = tx.send(reply);
            }))
        };
        // As the server does: the machine admits writes, then the lanes decide them.
        if !self.link.machine().writes_allowed() {
            let state = self.link.machine().state();
            let _ = writeln!(out, "write {k}: refused (state {state})");
            return;
        }
        let refusal = || "not in sync".to_string();
        match self.lanes.submit(&self.store, op, None, refusal, to, now) {
            Some(answer) => {
                let _ = writeln!(out, "write {k}: {answer:?}");
            }
            None => {
                let _ = writeln!(out, "write {k}: queued");
                self.waiting.push((k.to_string(), rx));
            }
        }
    }

    fn answers(&mut self, out: &mut String) {
        self.waiting.retain(|(k, rx)| match rx.try_recv() {
            Ok(reply) => {
                let _ = writeln!(out, "answer to write {k}: {reply:?}");
                false
            }
            Err(_) => true,
        });
    }

    fn status(&self, now: Instant, out: &mut String) {
        let m = self.link.machine();
        let next = self
            .link
            .poll_timeout()
            .map(|t| format!("{} ms", t.saturating_duration_since(now).as_millis()));
        let _ = writeln!(
            out,
            "state {} epoch {} current {} writes {}; live {:?}; jobs {}; late inputs {}; keys {}; catching up {}; stopped {}; next timer in {}",
            m.state(),
            m.epoch(),
            m.current(),
            if m.writes_allowed() { "allowed" } else { "refused" },
            self.link.live_conn(),
            self.link.jobs_outstanding(),
            self.link.late_inputs(),
            self.store.count(),
            self.link.catching_up(),
            self.link.stopped(),
            next.unwrap_or_else(|| "never".into()),
        );
    }

    /// Prints (and takes) everything the machine produced.
    fn outputs(&mut self, out: &mut String) {
        while let Some((c, msg)) = self.link.poll_transmit() {
            let msg = match msg {
                PeerMsg::Hello(h) => format!(
                    "hello (epoch {}, current {}, keys {})",
                    h.epoch, h.synced, h.keys
                ),
                PeerMsg::TransferAck { ok, reason } => format!("transfer ack ok={ok} {reason}")
                    .trim_end()
                    .to_string(),
                PeerMsg::Goodbye(reason) => format!("goodbye: {reason}"),
                other => format!("{other:?}"),
            };
            let _ = writeln!(out, "-> {c}: {msg}");
        }
        while let Some(event) = self.link.poll_event() {
            let _ = match event {
                PrimaryEvent::Dial => writeln!(out, "dial"),
                PrimaryEvent::Linked { conn } => writeln!(out, "linked {conn}"),
                PrimaryEvent::Answered { epoch, .. } => writeln!(out, "answered: epoch {epoch}"),
                PrimaryEvent::Settled(s) => writeln!(out, "lost link's writes settled: {s:?}"),
                PrimaryEvent::SendSnapshot { conn, buckets } => {
                    writeln!(
                        out,
                        "send our snapshot on {conn}: {} buckets",
                        buckets.len()
                    )
                }
                PrimaryEvent::Apply { id, job } => {
                    let line = writeln!(
                        out,
                        "job {}.{} starts: bucket {}",
                        id.generation,
                        id.seq,
                        job.bucket()
                    );
                    self.jobs.push_back((id, job));
                    line
                }
                PrimaryEvent::OpenLanes { conn, mark } => {
                    self.mark = Some(mark);
                    writeln!(out, "open the lanes on {conn} (epoch {})", mark.epoch)
                }
                PrimaryEvent::TransferVerified { buckets, received } => {
                    writeln!(
                        out,
                        "transfer of {buckets} buckets verified (received {received})"
                    )
                }
                PrimaryEvent::DigestChecks(n) => writeln!(out, "{n} digest checks sent"),
                PrimaryEvent::Close { conn, reason } => writeln!(out, "close {conn}: {reason}"),
                PrimaryEvent::Lost { conn, cause } => writeln!(out, "lost {conn}: {cause}"),
            };
        }
        while let Some(t) = self.link.poll_transition() {
            let _ = writeln!(out, "state {} -> {}: {}", t.from, t.to, t.cause);
        }
    }
}
