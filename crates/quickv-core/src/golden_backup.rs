//! The golden scripts' backup link ([`crate::backup_link::BackupLink`]): connections are numbered
//! by the script, every output the machine produces is printed after each command, and bucket
//! jobs run only when the script says `job-done` (so a link can drop while one is running).
//!
//! | command | does |
//! |---|---|
//! | `connect C p:FIELDS` | connection C's first message, a primary's hello (FIELDS as in `hellos`; run id = C) |
//! | `ctl C synced`, `ctl C goodbye`, `ctl C transfer-ack` | a later control message on C |
//! | `ctl C snapshot` | C sends a snapshot of a primary holding `a`, `b`, `c` (every bucket, `TransferDone` last) |
//! | `closed C` | C is gone |
//! | `job-done` | the oldest bucket job started finishes (installs its bucket) and is reported |
//! | `jobs-done` | `job-done` until no job is left; prints how many and the keys they installed |
//! | `wait MS` | time passes; the machine's timers run |
//! | `link-status` | state, epoch, the live connection, jobs outstanding, late inputs, the store |

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quickv_proto::peer::PeerMsg;

use crate::backup_link::{BackupConfig, BackupLink, JobId, LinkEvent};
use crate::store::{BucketId, Store};
use crate::transfer::{bucket_msgs, BucketJob};

/// The backup of the admission scripts.
pub(super) struct World {
    link: BackupLink,
    store: Arc<Store>,
    /// Bucket jobs handed out and not yet finished, oldest first.
    jobs: VecDeque<(JobId, BucketJob)>,
}

impl World {
    pub(super) fn new(now: Instant) -> World {
        let config = BackupConfig {
            run_id: 99,
            pair: 7,
            live_grace: Duration::from_millis(3000),
            silence: Duration::from_millis(1000),
            step: Duration::from_millis(10_000),
            drain: Duration::from_millis(2000),
            close_grace: Duration::from_millis(200),
        };
        let store = Arc::new(Store::new());
        World {
            link: BackupLink::new(config, store.clone(), 0, now),
            store,
            jobs: VecDeque::new(),
        }
    }

    /// Runs a command of this world; false if it is not one.
    pub(super) fn run(&mut self, words: &[&str], now: &mut Instant, out: &mut String) -> bool {
        let conn = |w: &str| -> u64 { w.parse().expect("connection number") };
        match words {
            ["connect", c, p] => {
                let (mut hello, _) = super::hello(true, p.trim_start_matches("p:"));
                hello.run_id = conn(c);
                let first = PeerMsg::Hello(Box::new(hello));
                self.link.handle_connect(conn(c), first, *now);
            }
            ["ctl", c, "snapshot"] => {
                let primary = Store::new();
                for k in ["a", "b", "c"] {
                    primary.put(Bytes::from(k), Bytes::from("1"));
                }
                let mut msgs = Vec::new();
                for b in BucketId::all() {
                    msgs.extend(bucket_msgs(&primary, b, &Default::default(), *now).0);
                }
                msgs.push(PeerMsg::TransferDone);
                for m in msgs {
                    self.link.handle_ctl(conn(c), m, *now);
                }
            }
            ["ctl", c, msg] => {
                let msg = match *msg {
                    "synced" => PeerMsg::Synced,
                    "goodbye" => PeerMsg::Goodbye("primary shutting down".into()),
                    "transfer-ack" => PeerMsg::TransferAck {
                        ok: true,
                        reason: String::new(),
                    },
                    other => panic!("unknown control message {other}"),
                };
                self.link.handle_ctl(conn(c), msg, *now);
            }
            ["closed", c] => self
                .link
                .handle_conn_closed(conn(c), "connection lost".into(), *now),
            ["job-done"] => {
                let (id, job) = self.jobs.pop_front().expect("a job running");
                let bucket = job.bucket();
                let result = job.apply(&self.store, *now);
                let _ = writeln!(
                    out,
                    "job {}.{} (bucket {bucket}) done: {result:?}",
                    id.generation, id.seq
                );
                self.link.handle_job_done(id, result, *now);
            }
            ["jobs-done"] => {
                let (mut n, mut keys) = (0, 0);
                while let Some((id, job)) = self.jobs.pop_front() {
                    let result = job.apply(&self.store, *now);
                    n += 1;
                    keys += result.as_ref().map_or(0, |k| *k);
                    self.link.handle_job_done(id, result, *now);
                    while let Some(LinkEvent::Apply { id, job }) = self.link.poll_event() {
                        self.jobs.push_back((id, job));
                    }
                }
                let _ = writeln!(out, "{n} jobs done, {keys} keys installed");
            }
            ["wait", ms] => {
                *now += Duration::from_millis(ms.parse().expect("ms"));
                self.link.handle_timeout(*now);
            }
            ["link-status"] => {
                let m = self.link.machine();
                let _ = writeln!(
                    out,
                    "state {} epoch {} current {} reads {}; live {:?}; jobs {}; late inputs {}; keys {}",
                    m.state(),
                    m.epoch(),
                    m.current(),
                    if m.reads_allowed() { "allowed" } else { "refused" },
                    self.link.live_conn(),
                    self.link.jobs_outstanding(),
                    self.link.late_inputs(),
                    self.store.count()
                );
            }
            _ => return false,
        }
        self.outputs(out);
        true
    }

    /// Prints (and takes) everything the machine produced.
    fn outputs(&mut self, out: &mut String) {
        while let Some((c, msg)) = self.link.poll_transmit() {
            let msg = match msg {
                PeerMsg::Hello(h) => format!(
                    "hello (epoch {}, current {}, keys {})",
                    h.epoch, h.synced, h.keys
                ),
                PeerMsg::Applied(_) => "applied marks".into(),
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
                LinkEvent::Close { conn, reason } => writeln!(out, "close {conn}: {reason}"),
                LinkEvent::Apply { id, job } => {
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
                LinkEvent::SendSnapshot { conn, buckets } => {
                    writeln!(
                        out,
                        "send our snapshot on {conn}: {} buckets",
                        buckets.len()
                    )
                }
                LinkEvent::Admitted {
                    conn,
                    generation,
                    epoch,
                    ..
                } => writeln!(
                    out,
                    "admitted {conn}: generation {generation}, epoch {epoch}"
                ),
                LinkEvent::Running {
                    conn, generation, ..
                } => writeln!(
                    out,
                    "running {conn}: data streams of generation {generation}"
                ),
                LinkEvent::TransferVerified { buckets } => {
                    writeln!(out, "transfer of {buckets} buckets verified")
                }
                LinkEvent::Lost { conn, cause } => writeln!(out, "lost {conn}: {cause}"),
            };
        }
        while let Some(t) = self.link.poll_transition() {
            let _ = writeln!(out, "state {} -> {}: {}", t.from, t.to, t.cause);
        }
    }
}
