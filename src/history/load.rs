//! A recorded write/read load: several clients hammering a few hot keys, bounded in count and time.
//!
//! Each simulated client has its own connection and issues one operation at a time (so its own
//! operations never overlap, as the checker assumes for a client), chosen at random: 25 % insert,
//! 25 % update, 15 % delete, 35 % get, every write with a unique value. All clients share a small
//! set of hot keys, so several writers race on each key and the linearizability check has real
//! concurrency to judge. To keep each key's history short enough for an exhaustive search, the
//! hot set moves on every `ops_per_round` operations of a client (`<prefix><round>.<k>`); clients
//! advance at about the same pace, so each round's keys see all of them at once.
//!
//! Faults make answers fail fast (`unavailable` is immediate), so after anything but a definite
//! answer a client waits `retry_pause` instead of `pause`: an outage does not burn the count bound
//! or bloat the history. A lost connection is redialed; a call that takes longer than
//! `call_timeout` is abandoned (recorded as indeterminate) and the connection replaced.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ClientId, Kind, Observed, Recorder};
use quickv_client::{Client, ClientConfig};

/// The shape and bounds of a load.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The server to load (`host:port`): the primary.
    pub addr: String,
    /// The pair's backup: when set, each client connects to the pair
    /// ([`Client::connect_pair`]) and its reads go through [`Client::read`] with
    /// `client_config.read_from` ([`ReadFrom::Any`](quickv_client::ReadFrom::Any) spreads them
    /// over both servers); every read records the server that answered.
    pub backup_addr: Option<String>,
    /// How each client connects (certificates, timeouts).
    pub client_config: ClientConfig,
    /// Concurrent clients, each with its own connection.
    pub clients: u32,
    /// Hot keys in use at once.
    pub hot_keys: u32,
    /// Operations a client performs on one round's hot keys before moving to the next round.
    pub ops_per_round: u64,
    /// Most operations one client performs (the count bound).
    pub ops_per_client: u64,
    /// Longest the load runs (the time bound).
    pub max_time: Duration,
    /// Pause after a definite answer, shaping the load so the machine still has room for the
    /// servers.
    pub pause: Duration,
    /// Pause after a refusal, an indeterminate answer, a failure or a failed connect.
    pub retry_pause: Duration,
    /// Longest wait for one answer before the call is abandoned.
    pub call_timeout: Duration,
    /// Key prefix, so several loads can share a server.
    pub key_prefix: String,
    /// Seed of the operation mix; client `i` uses `seed + i`.
    pub seed: u64,
}

impl Workload {
    /// A small default shape against `addr`: 6 clients on 2 hot keys, 60 operations per round,
    /// at most 5 000 operations per client and 30 s.
    pub fn new(addr: impl Into<String>, client_config: ClientConfig) -> Workload {
        Workload {
            addr: addr.into(),
            backup_addr: None,
            client_config,
            clients: 6,
            hot_keys: 2,
            ops_per_round: 60,
            ops_per_client: 5_000,
            max_time: Duration::from_secs(30),
            pause: Duration::from_millis(1),
            retry_pause: Duration::from_millis(25),
            call_timeout: Duration::from_secs(10),
            key_prefix: "hot".into(),
            seed: 1,
        }
    }

    /// Runs the load until every client reaches its count bound, `max_time` passes, or `stop` is
    /// cancelled; every operation goes to `recorder`.
    pub async fn run(&self, recorder: &Recorder, stop: CancellationToken) -> WorkloadFigures {
        let deadline = Instant::now() + self.max_time;
        let shared = Arc::new(self.clone());
        let tasks: Vec<_> = (0..self.clients)
            .map(|id| {
                let w = shared.clone();
                let rec = recorder.clone();
                let stop = stop.clone();
                tokio::spawn(async move { w.client(id, &rec, &stop, deadline).await })
            })
            .collect();
        let mut total = WorkloadFigures::default();
        for t in tasks {
            // A panicked client task loses only its figures; its operations are recorded.
            if let Ok(f) = t.await {
                total.operations += f.operations;
                total.connects += f.connects;
                total.connect_failures += f.connect_failures;
            }
        }
        total
    }

    async fn client(
        &self,
        id: ClientId,
        rec: &Recorder,
        stop: &CancellationToken,
        deadline: Instant,
    ) -> WorkloadFigures {
        let mut figures = WorkloadFigures::default();
        let mut rng = XorShift::new(self.seed.wrapping_add(u64::from(id)));
        let mut conn: Option<Client> = None;
        let mut done = 0u64;
        while done < self.ops_per_client && Instant::now() < deadline && !stop.is_cancelled() {
            let c = match &conn {
                Some(c) => c.clone(),
                None => {
                    let attempt = tokio::select! {
                        c = self.connect() => c,
                        _ = stop.cancelled() => break,
                    };
                    match attempt {
                        Ok(c) => {
                            figures.connects += 1;
                            conn = Some(c.clone());
                            c
                        }
                        Err(_) => {
                            figures.connect_failures += 1;
                            if !pause(self.retry_pause, stop).await {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            let round = done / self.ops_per_round.max(1);
            let key = Bytes::from(format!(
                "{}{round}.{}",
                self.key_prefix,
                rng.below(u64::from(self.hot_keys.max(1)))
            ));
            let kind = match rng.below(100) {
                0..25 => Kind::Insert(rec.unique_value(id)),
                25..50 => Kind::Update(rec.unique_value(id)),
                50..65 => Kind::Delete,
                _ => Kind::Get,
            };
            let call = async {
                match (&kind, &self.backup_addr) {
                    (Kind::Get, Some(_)) => rec.read(id, &c, key).await,
                    _ => rec.call(id, &c, key, kind).await,
                }
            };
            let outcome = match tokio::time::timeout(self.call_timeout, call).await {
                Ok(outcome) => outcome,
                // Dropping the call recorded it (indeterminate write / failed read).
                Err(_) => Observed::Failed("call timed out".into()),
            };
            done += 1;
            figures.operations += 1;
            let wait = match outcome {
                o if o.is_definite() => self.pause,
                Observed::Failed(_) => {
                    // The connection is broken (or answers nonsense): dial again.
                    if let Some(old) = conn.take() {
                        old.close().await;
                    }
                    self.retry_pause
                }
                _ => self.retry_pause,
            };
            if !pause(wait, stop).await {
                break;
            }
        }
        if let Some(c) = conn {
            c.close().await;
        }
        figures
    }
}

impl Workload {
    /// One client's connection: to the primary, or to the pair when reads may go to the backup.
    async fn connect(&self) -> Result<Client, quickv_client::ClientError> {
        match &self.backup_addr {
            Some(backup) => Client::connect_pair(&self.addr, backup, &self.client_config).await,
            None => Client::connect(&self.addr, &self.client_config).await,
        }
    }
}

/// Waits `d`, or less if `stop` fires; false if it did.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.cancelled() => false,
    }
}

/// Counts from one load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFigures {
    /// Operations issued (all outcomes).
    pub operations: u64,
    /// Successful connects (the first one plus redials).
    pub connects: u64,
    /// Connect attempts that failed (server down or unreachable).
    pub connect_failures: u64,
}

/// xorshift64*: a tiny deterministic generator for the operation mix (no dependency needed).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0); the slight modulo bias does not matter for a load mix.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
