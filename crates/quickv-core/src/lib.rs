//! # quickv-core
//!
//! The part of a quickv server that needs no I/O, the way `quinn-proto` is the part of quinn
//! that needs no sockets: the store and its exactly-once session records, the replication state
//! machine (hellos, admission, epochs and fencing, the plan of a warm start), the primary's
//! lanes (deciding writes, ordering, acks, digest checks, resyncs, the ack clock), the backup's
//! applier, and the bootstrap transfer. The server (`quickv-server`) drives it over QUIC with
//! tokio; the simulator (`tests/simulation.rs`) drives the same code on virtual time.
//!
//! # Rules
//!
//! - No tokio, quinn or rustls: `cargo tree -p quickv-core -e normal` lists only the codec
//!   (`quickv-proto`), `bytes`, `flurry`, `thiserror`, `tracing` and `xxhash-rust`.
//! - No clock: every function that needs the time takes `now: Instant`, and the caller reads
//!   its clock (the server once per batch, the simulator its virtual time). The only clock
//!   read in this crate is the unit tests' time origin (`testing::origin`, `cfg(test)`).
//! - Output the caller must act on comes back as values (replies, messages to send, plans) or
//!   goes through small traits the caller implements: a lane's [`lanes::FrameSink`] (the
//!   server's data-stream outbox; a channel in the simulator), a write's [`reply::ReplyTo`] (a
//!   client stream's answer sink, or a callback), and [`lanes::Wake`]. Why traits rather than
//!   polled queues is said in [`lanes`] and [`reply`]: an answer or a frame is produced on the
//!   thread that applies an ack or submits a write, and a queue would add a hop per write.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`store`] | 32 flurry buckets with counts and order-independent digests; session records |
//! | [`state`] | the replication state machine: admission, epochs, the warm-start plan |
//! | [`hello`] | a server's hello (and the discard of a partial copy) |
//! | [`opening`] | a link's opening steps: the hello answered, the plan, the transfer's direction and end |
//! | [`lanes`] | the primary's 32 lanes: decide, send, apply on ack, checks, resyncs |
//! | [`resync`] | a lane resync's plan and image; the ack clock |
//! | [`reply`] | where a replicated write's answer goes |
//! | [`apply`] | the backup's applier of a data stream |
//! | [`backup_link`] | the backup's side of the link: admission, opening, transfer jobs, goodbye, the read fence |
//! | [`primary_link`] | the primary's side of the link: dialing, opening, transfer jobs, lanes opened, ack timeout and checks, goodbye, graceful stop (F7) |
//! | [`primary_events`] | what the primary's link asks of its driver; the data streams' lock-free path ([`primary_events::on_data`]) |
//! | [`timers`] | the primary's link timers: the ack timeout and the digest-check schedule |
//! | [`transfer`] | the bootstrap transfer: encoding buckets, receiving and verifying them |
//! | [`write`](mod@write) | the outcome table of a client write ([`write::decide`]), for standalone and primary |
//! | [`counters`], [`error`] | status counters; why a link failed |

pub mod apply;
pub mod backup_events;
pub mod backup_link;
pub mod backup_shared;
pub mod commit_point;
pub mod counters;
pub mod error;
pub mod hello;
mod intake;
pub mod lanes;
pub mod opening;
pub mod primary_events;
pub mod primary_link;
pub mod reply;
pub mod resync;
pub mod state;
pub mod store;
pub mod timers;
pub mod transfer;
pub mod write;

pub use counters::Counters;
pub use error::LinkError;

#[cfg(test)]
mod golden;

#[cfg(test)]
pub(crate) mod testing {
    //! What the unit tests share.

    use std::sync::OnceLock;
    use std::time::Instant;

    /// The unit tests' time origin: the one clock read in this crate (tests only), taken once
    /// per process so every test's times are offsets from the same instant.
    pub(crate) fn origin() -> Instant {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }

    /// [`origin`], shorter.
    pub(crate) fn t0() -> Instant {
        origin()
    }

    /// A write's answer once its ack is applied (a channel the test reads).
    pub(crate) type Pending = std::sync::mpsc::Receiver<quickv_proto::Reply>;

    /// [`crate::lanes::Lanes::submit`] answering a queued write on a channel: `Err(answer)` now,
    /// or `Ok` with the channel its answer will arrive on. `refusal` is the "not in sync" text.
    pub(crate) fn submit(
        lanes: &crate::lanes::Lanes,
        store: &crate::store::Store,
        op: quickv_proto::Op,
        session: Option<quickv_proto::SessionWrite>,
        refusal: &'static str,
    ) -> Result<Pending, quickv_proto::Reply> {
        let (tx, rx) = std::sync::mpsc::channel();
        let to = move || {
            crate::reply::ReplyTo::Once(Box::new(move |reply| {
                let _ = tx.send(reply);
            }))
        };
        match lanes.submit(store, op, session, || refusal.to_string(), to, t0()) {
            Some(now) => Err(now),
            None => Ok(rx),
        }
    }
}
