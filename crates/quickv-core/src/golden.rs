//! Golden scripts (in the style of toydb's goldenscript tests): small text files under
//! `crates/quickv-core/golden/` that drive the core's pieces — admission and the warm-start plan,
//! the primary's lanes, the backup's applier, digest checks, resyncs, fencing, the ack clock —
//! and hold the expected output of every command. They double as documentation of the protocol.
//!
//! A block is one or more commands, a `---` line, the expected output, and a blank line. `#`
//! starts a comment. Run with `UPDATE_GOLDEN=1` to rewrite the expected output after a
//! deliberate change, then read the diff.
//!
//! Commands (the pair is one primary store with its lanes, one backup store with one applier,
//! and a virtual clock; frames move only when delivered):
//!
//! | command | does |
//! |---|---|
//! | `insert K V`, `update K V`, `delete K` (optional `stamp=SESSION.SEQ age=MS`) | a client write on the primary (`Lanes::submit`) |
//! | `deliver p->b` | every frame the lanes queued, decoded and applied by the backup (`StreamApplier`); its acks and reports queue the other way |
//! | `deliver b->p` | the backup's acks and mismatch reports, handled by the primary's lanes |
//! | `drop p->b` | loses what the primary queued (a lost stream) |
//! | `check K` | a digest check on K's lane |
//! | `corrupt K V` | the backup's store diverges |
//! | `cut` | the link is lost (`Lanes::fail_all`) |
//! | `link` | a new link opens the lanes (a new generation; the backup's applier restarts) |
//! | `ack-stale GEN K OFFSET` | an ack of an older link generation arrives (`handle_ack_on`) |
//! | `tick MS` | time passes; reports a lane stalled past the ack timeout (1000 ms) |
//! | `status` | both stores and the lanes' offsets |
//! | `connect C p:FIELDS`, `ctl C MSG`, `closed C`, `job-done`, `wait MS`, `link-status` | the backup's link machine ([`crate::backup_link`]): see `golden_backup.rs` |
//! | `primary connected C`, `primary answer C b:FIELDS`, `primary ctl C MSG`, `primary lanes-open C`, `primary write K V`, `primary ack K`, `primary stop`, … | the primary's link machine ([`crate::primary_link`]): see `golden_primary.rs` |
//! | `hellos p:FIELDS b:FIELDS` | admission (`admit`, `may_supersede`) and the plan (`decide`) of two hellos; FIELDS: `epoch=N`, `current`, `keys=K` (K keys in K buckets), `heard=MS` |

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quickv_proto::peer::{PeerHello, PeerMsg};
use quickv_proto::{Op, Reply, SessionWrite, WriteStamp};

use crate::apply::StreamApplier;
use crate::lanes::{CheckOutcome, Lanes};
use crate::reply::ReplyTo;
use crate::state::{admit, decide, may_supersede};
use crate::store::{BucketId, Digest, Store, BUCKETS};
use crate::Counters;

#[path = "golden_backup.rs"]
mod backup;
#[path = "golden_primary.rs"]
mod primary;

/// The ack timeout of the scripts.
const ACK_TIMEOUT: Duration = Duration::from_millis(1000);

/// The pair a script drives.
struct Pair {
    primary: Store,
    lanes: Lanes,
    /// The lanes' queued frames (one channel per lane).
    to_backup: Vec<mpsc::Receiver<Bytes>>,
    backup: Store,
    applier: StreamApplier,
    counters: Counters,
    /// The backup's acks and reports, not yet delivered.
    to_primary: VecDeque<PeerMsg>,
    /// Acks already sent per lane (the backup acks what a delivery advanced).
    acked: [u64; BUCKETS],
    /// Answers of queued writes: (write number, channel).
    waiting: Vec<(usize, mpsc::Receiver<Reply>)>,
    writes: usize,
    generation: u64,
    origin: Instant,
    now: Instant,
    /// The backup's link machine, for the admission scripts.
    backup_link: backup::World,
    /// The primary's link machine, for the primary's scripts.
    primary_link: primary::World,
}

impl Pair {
    fn new() -> Pair {
        let origin = crate::testing::origin();
        let mut pair = Pair {
            primary: Store::new(),
            lanes: Lanes::default(),
            to_backup: Vec::new(),
            backup: Store::new(),
            applier: StreamApplier::default(),
            counters: Counters::default(),
            to_primary: VecDeque::new(),
            acked: [0; BUCKETS],
            waiting: Vec::new(),
            writes: 0,
            generation: 0,
            origin,
            now: origin,
            backup_link: backup::World::new(origin),
            primary_link: primary::World::new(origin),
        };
        pair.link();
        pair
    }

    fn link(&mut self) -> u64 {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..BUCKETS).map(|_| mpsc::channel()).unzip();
        self.generation = self.lanes.enable(txs);
        self.to_backup = rxs;
        self.applier = StreamApplier::default();
        self.acked = [0; BUCKETS];
        self.to_primary.clear();
        self.generation
    }

    fn write(&mut self, op: Op, session: Option<SessionWrite>, out: &mut String) {
        self.writes += 1;
        let n = self.writes;
        let (tx, rx) = mpsc::channel();
        let to = move || {
            ReplyTo::Once(Box::new(move |reply| {
                let _ = tx.send(reply);
            }))
        };
        let refusal = || "not in sync".to_string();
        match self
            .lanes
            .submit(&self.primary, op, session, refusal, to, self.now)
        {
            Some(reply) => writeln!(out, "#{n} answered now: {}", show(&reply)),
            None => {
                self.waiting.push((n, rx));
                writeln!(out, "#{n} waits for its ack")
            }
        }
        .expect("write to a string");
    }

    /// Answers that arrived since the last look.
    fn answers(&mut self, out: &mut String) {
        self.waiting.retain(|(n, rx)| match rx.try_recv() {
            Ok(reply) => {
                let _ = writeln!(out, "#{n} answered: {}", show(&reply));
                false
            }
            Err(mpsc::TryRecvError::Empty) => true,
            Err(mpsc::TryRecvError::Disconnected) => {
                let _ = writeln!(out, "#{n} fate unknown (waiter dropped)");
                false
            }
        });
    }

    fn deliver_to_backup(&mut self, out: &mut String) {
        let mut buf = BytesMut::new();
        for rx in &self.to_backup {
            while let Ok(frame) = rx.try_recv() {
                buf.extend_from_slice(&frame);
            }
        }
        let limits = Default::default();
        loop {
            let msg = match PeerMsg::decode(&mut buf, &limits) {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => {
                    let _ = writeln!(out, "b: undecodable: {e}");
                    break;
                }
            };
            let _ = writeln!(out, "b <- {}", frame(&msg));
            match self
                .applier
                .handle(msg, &self.backup, &self.counters, self.now)
            {
                Ok(Some(report)) => self.to_primary.push_back(report),
                Ok(None) => {}
                Err(e) => {
                    let _ = writeln!(out, "b: link fails: {e}");
                    return;
                }
            }
        }
        for b in BucketId::all() {
            let applied = self.applier.applied[b.index()];
            if applied > self.acked[b.index()] {
                self.acked[b.index()] = applied;
                self.to_primary.push_back(PeerMsg::Ack {
                    bucket: b,
                    offset: applied,
                });
            }
        }
    }

    fn deliver_to_primary(&mut self, out: &mut String) {
        while let Some(msg) = self.to_primary.pop_front() {
            let _ = writeln!(out, "p <- {}", frame(&msg));
            match msg {
                PeerMsg::Ack { bucket, offset } => {
                    if let Err(e) = self
                        .lanes
                        .handle_ack(&self.primary, bucket, offset, self.now)
                    {
                        let _ = writeln!(out, "p: link fails: {e}");
                    }
                }
                PeerMsg::Mismatch { bucket, .. } => {
                    self.lanes.handle_mismatch(&self.primary, bucket, self.now);
                    let _ = writeln!(out, "p: resync of bucket {bucket} queued");
                }
                other => {
                    let _ = writeln!(out, "p: unexpected {other:?}");
                }
            }
        }
        self.answers(out);
    }

    fn status(&self, out: &mut String) {
        let dump = |store: &Store| {
            let mut all = BTreeMap::new();
            for b in BucketId::all() {
                for (k, v) in store.bucket_snapshot(b) {
                    all.insert(k, v);
                }
            }
            let entries: Vec<_> = all
                .iter()
                .map(|(k, v)| format!("{}={}", text(k), text(v)))
                .collect();
            match entries.is_empty() {
                true => "(empty)".to_string(),
                false => entries.join(" "),
            }
        };
        let _ = writeln!(out, "primary: {}", dump(&self.primary));
        let _ = writeln!(out, "backup: {}", dump(&self.backup));
        for (b, lane) in self.lanes.status().iter().enumerate() {
            if lane.offset > 0 || lane.pending > 0 {
                let _ = writeln!(
                    out,
                    "lane {b}: sent {} acked {} pending {}",
                    lane.offset, lane.acked, lane.pending
                );
            }
        }
        let same = self.primary.digests() == self.backup.digests();
        let _ = writeln!(out, "digests equal: {same}");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(reply: &Reply) -> String {
    match reply {
        Reply::Value(v) => format!("value {}", text(v)),
        Reply::Unavailable(why) => format!("unavailable ({why})"),
        Reply::Indeterminate(why) => format!("indeterminate ({why})"),
        Reply::Error { code, message } => format!("error {code:?} ({message})"),
        other => format!("{other:?}"),
    }
}

fn frame(msg: &PeerMsg) -> String {
    match msg {
        PeerMsg::Put {
            offset, key, value, ..
        } => format!(
            "put lane {} offset {offset} {}={}",
            BucketId::of(key),
            text(key),
            text(value)
        ),
        PeerMsg::Remove { offset, key, .. } => {
            format!(
                "remove lane {} offset {offset} {}",
                BucketId::of(key),
                text(key)
            )
        }
        PeerMsg::Ack { bucket, offset } => format!("ack lane {bucket} offset {offset}"),
        PeerMsg::Check { bucket, offset, .. } => format!("check lane {bucket} at offset {offset}"),
        PeerMsg::Mismatch { bucket, offset, .. } => {
            format!("mismatch lane {bucket} at offset {offset}")
        }
        PeerMsg::ReplaceBegin(b) => format!("resync begins, bucket {b}"),
        PeerMsg::BucketChunk(entries) => format!("chunk of {} entries", entries.len()),
        PeerMsg::ReplaceEnd { bucket, offset, .. } => {
            format!("resync ends, bucket {bucket} at offset {offset}")
        }
        other => format!("{other:?}"),
    }
}

/// A hello from `epoch=N current keys=K heard=MS` fields; the heard age is returned apart.
fn hello(primary: bool, fields: &str) -> (PeerHello, Option<Duration>) {
    let mut hello = PeerHello {
        primary,
        run_id: u64::from(primary) + 1,
        pair: 7,
        epoch: 0,
        synced: false,
        keys: 0,
        digests: [Digest::default(); BUCKETS],
    };
    let mut heard = None;
    for field in fields.split(',').filter(|f| !f.is_empty()) {
        match field.split_once('=') {
            Some(("epoch", n)) => hello.epoch = n.parse().expect("epoch"),
            Some(("keys", n)) => {
                hello.keys = n.parse().expect("keys");
                for i in 0..hello.keys as usize {
                    hello.digests[i % BUCKETS] = Digest::of_entry(b"k", &[i as u8]);
                }
            }
            Some(("heard", ms)) => {
                heard = Some(Duration::from_millis(ms.parse().expect("ms")));
            }
            None if field == "current" => hello.synced = true,
            _ => panic!("unknown hello field {field}"),
        }
    }
    (hello, heard)
}

fn hellos(p: &str, b: &str, out: &mut String) {
    let (primary, _) = hello(true, p.trim_start_matches("p:"));
    let (backup, heard) = hello(false, b.trim_start_matches("b:"));
    let grace = Duration::from_millis(3000);
    match admit(&primary, &backup).and_then(|e| may_supersede(&primary, heard, grace).map(|()| e)) {
        Ok(epoch) => {
            let plan = decide(&primary, &backup);
            let _ = writeln!(
                out,
                "admitted: epoch {epoch}; data from the {:?}, {} buckets sent",
                plan.source,
                plan.buckets.len()
            );
        }
        Err(refusal) => {
            let _ = writeln!(out, "refused: {refusal}");
        }
    }
}

fn stamp(args: &[&str]) -> Option<SessionWrite> {
    let mut session = None;
    let mut age_ms = 0;
    for a in args {
        if let Some(s) = a.strip_prefix("stamp=") {
            let (sess, seq) = s.split_once('.').expect("stamp=SESSION.SEQ");
            session = Some(WriteStamp::new(
                sess.parse().expect("session"),
                seq.parse().expect("seq"),
            ));
        } else if let Some(ms) = a.strip_prefix("age=") {
            age_ms = ms.parse().expect("age");
        }
    }
    session.map(|stamp| SessionWrite { stamp, age_ms })
}

/// Runs one command and returns its output.
fn run(pair: &mut Pair, line: &str) -> String {
    let mut out = String::new();
    let words: Vec<&str> = line.split_whitespace().collect();
    let key = |i: usize| Bytes::from(words[i].to_string());
    match words.as_slice() {
        ["insert", _, _, rest @ ..] => {
            let op = Op::Insert {
                key: key(1),
                value: key(2),
            };
            pair.write(op, stamp(rest), &mut out)
        }
        ["update", _, _, rest @ ..] => {
            let op = Op::Update {
                key: key(1),
                value: key(2),
            };
            pair.write(op, stamp(rest), &mut out)
        }
        ["delete", _, rest @ ..] => pair.write(Op::Delete { key: key(1) }, stamp(rest), &mut out),
        ["deliver", "p->b"] => pair.deliver_to_backup(&mut out),
        ["deliver", "b->p"] => pair.deliver_to_primary(&mut out),
        ["drop", "p->b"] => {
            let lost: usize = pair.to_backup.iter().map(|rx| rx.try_iter().count()).sum();
            let _ = writeln!(out, "{lost} frames lost");
        }
        ["check", k] => {
            let b = BucketId::of(k.as_bytes());
            let sent = matches!(pair.lanes.check(&pair.primary, b), CheckOutcome::Sent);
            let _ = writeln!(
                out,
                "check of lane {b}: {}",
                if sent { "sent" } else { "skipped" }
            );
        }
        ["corrupt", _, _] => {
            pair.backup.put(key(1), key(2));
        }
        ["cut"] => {
            pair.lanes.fail_all("the link was cut", pair.now);
            pair.answers(&mut out);
        }
        ["link"] => {
            let g = pair.link();
            let _ = writeln!(out, "lanes open on link {g}");
        }
        ["ack-stale", g, k, offset] => {
            let b = BucketId::of(k.as_bytes());
            let (g, offset) = (g.parse().expect("gen"), offset.parse().expect("offset"));
            let r = pair
                .lanes
                .handle_ack_on(g, &pair.primary, b, offset, pair.now);
            let _ = writeln!(out, "ack of link {g} on lane {b}: {r:?}");
            pair.answers(&mut out);
        }
        ["tick", ms] => {
            pair.now += Duration::from_millis(ms.parse().expect("ms"));
            let at = pair.now.duration_since(pair.origin).as_millis();
            match pair.lanes.stalled(pair.now, ACK_TIMEOUT, ACK_TIMEOUT * 10) {
                Some((b, waited)) => {
                    let waited = waited.as_millis();
                    let _ = writeln!(
                        out,
                        "t={at}ms: lane {b} stalled, no ack progress for {waited}ms"
                    );
                }
                None => {
                    let _ = writeln!(out, "t={at}ms: no lane stalled");
                }
            }
        }
        ["status"] => pair.status(&mut out),
        ["hellos", p, b] => hellos(p, b, &mut out),
        words => {
            if !pair.backup_link.run(words, &mut pair.now, &mut out)
                && !pair.primary_link.run(words, &mut pair.now, &mut out)
            {
                panic!("unknown command: {line}")
            }
        }
    }
    out
}

/// Runs a script, returning it with every block's output recomputed.
fn replay(script: &str) -> String {
    let mut pair = Pair::new();
    let mut result = String::new();
    let mut lines = script.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            result.push_str(line);
            result.push('\n');
            continue;
        }
        let mut commands = vec![line];
        for next in lines.by_ref() {
            if next == "---" {
                break;
            }
            commands.push(next);
        }
        // Skip the old expected output, up to the blank line.
        for old in lines.by_ref() {
            if old.trim().is_empty() {
                break;
            }
        }
        let mut output = String::new();
        for command in &commands {
            result.push_str(command);
            result.push('\n');
            output.push_str(&run(&mut pair, command));
        }
        result.push_str("---\n");
        if output.is_empty() {
            output.push_str("ok\n");
        }
        result.push_str(&output);
        result.push('\n');
    }
    result
}

#[test]
fn golden_scripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "script"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no scripts in {}", dir.display());
    for path in scripts {
        let script = std::fs::read_to_string(&path).expect("read script");
        let got = replay(&script);
        if update {
            std::fs::write(&path, &got).expect("write script");
        } else {
            assert!(
                got == script,
                "{} differs; rerun with UPDATE_GOLDEN=1 and read the diff:\n{got}",
                path.display()
            );
        }
    }
}
