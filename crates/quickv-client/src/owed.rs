//! The calls a client stream owes answers to: a slab of slots that request ids index directly,
//! and in which each caller finds its outcome.
//!
//! Each stream keeps its calls in a `Vec` of slots with a free list. A request id names its slot:
//!
//! ```text
//!  63        48 47        32 31                 0
//! ┌────────────┬────────────┬────────────────────┐
//! │ generation │  stream    │       slot         │
//! └────────────┴────────────┴────────────────────┘
//! ```
//!
//! so matching an answer to its caller is an index and a compare, not a hash-map lookup, and ids
//! stay unique among the requests in flight on the connection (docs/protocol.md: the stream index
//! is part of the id). A slot's generation changes every time it is freed (it is never 0, so no
//! id is 0, the id of stream-level complaints), so an answer to an id that is not — or no
//! longer — in flight is a protocol error, never the completion of someone else's call.
//!
//! The slot is also where the caller's outcome waits: the stream's reader stores the answer in
//! it and wakes the caller's task with the waker the caller left there ([`Owed::poll_outcome`]),
//! so an answer costs no channel and no allocation, and the reader wakes all the callers of one
//! read at once, after it let go of the lock. A slot has two sides, each with its own state:
//!
//! ```text
//!  caller: Waiting(waker) ──answer, deadline, stream died──► Settled(outcome) ──taken──► Gone
//!     └──────────────────────── caller stopped waiting ─────────────────────────────────► Gone
//!  wire:   Queued ──written──► Written ──answered, stream died──► Done
//!     └──── skipped by the writer (its caller settled or gone) ──► Done
//! ```
//!
//! and it is freed when both are finished: the caller `Gone` and the wire not `Written`. A call
//! whose caller stopped waiting (future dropped, deadline passed) after it was written keeps a
//! tombstone until the server answers: its late answer is recognised and discarded, and its id is
//! not reused while the server may still answer it. A call freed before it was written is skipped
//! by the writer (its id no longer names a slot).
//!
//! Deadlines: a slot carries its call's deadline, and one sweeper task per stream sleeps until
//! the earliest one ([`Owed::expire`]), instead of a timer per call.

use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::ClientError;
use quickv_proto::Reply;

/// A call's outcome: the server's reply, or why there is none.
pub(crate) type Outcome = Result<Reply, ClientError>;

/// Bits of a request id that name the slot.
const SLOT_BITS: u32 = 32;
/// Bits of a request id that name the stream (above the slot bits).
const STREAM_BITS: u32 = 16;

/// When a call stops waiting, and the budget it was given (for the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline {
    /// The instant the call is past its deadline.
    pub(crate) at: Instant,
    /// The deadline as configured, e.g. 10 s, to say so in the outcome.
    pub(crate) budget: Duration,
}

impl Deadline {
    /// A deadline `budget` from now; `None` if that instant is beyond what the clock can name
    /// (a budget of centuries: no deadline in practice).
    pub(crate) fn after(budget: Duration) -> Option<Deadline> {
        Instant::now()
            .checked_add(budget)
            .map(|at| Deadline { at, budget })
    }

    /// What the call becomes once past this deadline.
    pub(crate) fn outcome(&self, is_write: bool) -> Outcome {
        past_deadline(is_write, self.budget)
    }
}

/// What a call past its deadline becomes: a write may have been applied.
pub(crate) fn past_deadline(is_write: bool, deadline: Duration) -> Outcome {
    if is_write {
        Ok(Reply::Indeterminate(format!(
            "no answer within the deadline of {deadline:?}; the write may have been applied"
        )))
    } else {
        Err(ClientError::Timeout(format!(
            "no answer within the deadline of {deadline:?}"
        )))
    }
}

/// The request id of `slot` on `stream` in `generation`.
fn request_id(generation: u16, stream: u16, slot: u32) -> u64 {
    (u64::from(generation) << (SLOT_BITS + STREAM_BITS))
        | (u64::from(stream) << SLOT_BITS)
        | u64::from(slot)
}

/// The (generation, stream, slot) a request id names.
fn split_id(id: u64) -> (u16, u16, u32) {
    // Truncations intended: each field is cut out of its bits.
    let slot = id as u32;
    let stream = (id >> SLOT_BITS) as u16;
    let generation = (id >> (SLOT_BITS + STREAM_BITS)) as u16;
    (generation, stream, slot)
}

/// One slot of the slab.
#[derive(Debug)]
struct Slot {
    /// Changes each time the slot is freed, so an old id no longer matches; never 0.
    generation: u16,
    /// The call using the slot, if any.
    call: Option<Waiting>,
}

/// Where the caller of a call stands.
#[derive(Debug)]
enum Caller {
    /// Waiting for the outcome, with the waker of its last poll (`None` before the first).
    Waiting(Option<Waker>),
    /// The outcome is here and the caller has not taken it yet.
    Settled(Outcome),
    /// The caller took its outcome or stopped waiting: nothing more is delivered.
    Gone,
}

/// Where the request of a call stands on the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// In the pipe's queue, not yet written.
    Queued,
    /// Encoded into a batch: from then on the server may answer it, so the slot stays until it
    /// does.
    Written,
    /// Nothing more will come for it: answered, skipped by the writer, or the stream died.
    Done,
}

/// One call queued or written on a stream whose slot is still in use.
#[derive(Debug)]
struct Waiting {
    /// The caller's side.
    caller: Caller,
    /// The request's side.
    wire: Wire,
    /// Writes become indeterminate, not failed, if the connection dies after they were sent.
    is_write: bool,
    /// When the caller stops waiting, if ever.
    due: Option<Deadline>,
    /// Dump entries from chunks received so far.
    gathered: Vec<(Bytes, Bytes)>,
}

impl Waiting {
    /// Settles a waiting caller with `outcome` and returns its waker; an outcome for a caller
    /// already settled or gone is dropped.
    fn settle(&mut self, outcome: Outcome) -> Option<Waker> {
        match &mut self.caller {
            Caller::Waiting(waker) => {
                let waker = waker.take();
                self.caller = Caller::Settled(outcome);
                self.gathered = Vec::new();
                waker
            }
            Caller::Settled(_) | Caller::Gone => None,
        }
    }

    /// True once neither side needs the slot any more.
    fn finished(&self) -> bool {
        matches!(self.caller, Caller::Gone) && self.wire != Wire::Written
    }
}

/// Requests queued or written on one stream and not yet answered, and outcomes not yet taken.
#[derive(Debug)]
pub(crate) struct Owed {
    /// This stream's index on its connection, part of every id.
    stream: u16,
    /// The slab.
    slots: Vec<Slot>,
    /// Free slots, most recently freed last (reused first: it is warm in the cache).
    free: Vec<u32>,
    /// The deadline the sweeper sleeps until (`None`: it waits for a call with a deadline).
    armed: Option<Instant>,
    /// Set once the stream is dead; later calls are refused and go to a new connection.
    pub(crate) broken: Option<ClientError>,
}

impl Owed {
    /// An empty slab for stream number `stream` of its connection.
    pub(crate) fn new(stream: u16) -> Owed {
        Owed {
            stream,
            slots: Vec::new(),
            free: Vec::new(),
            armed: None,
            broken: None,
        }
    }

    /// Takes a slot for a call about to be queued and returns its request id, and whether the
    /// sweeper must be woken (the call's deadline comes before any it is armed for). `waker`, if
    /// given, is the caller's, woken when the outcome comes (saving the caller a first poll).
    /// `None` if
    /// the stream is broken (the call should go to a new connection) or, in theory, out of ids
    /// (2³² calls in flight on one stream).
    pub(crate) fn register(
        &mut self,
        is_write: bool,
        due: Option<Deadline>,
        waker: Option<Waker>,
    ) -> Option<(u64, bool)> {
        if self.broken.is_some() {
            return None;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).ok()?;
                self.slots.push(Slot {
                    generation: 1,
                    call: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.call = Some(Waiting {
            caller: Caller::Waiting(waker),
            wire: Wire::Queued,
            is_write,
            due,
            gathered: Vec::new(),
        });
        let wake = match due {
            Some(d) if self.armed.is_none_or(|armed| d.at < armed) => {
                self.armed = Some(d.at);
                true
            }
            _ => false,
        };
        Some((request_id(slot.generation, self.stream, index), wake))
    }

    /// The writer is about to encode call `id`: true if it is to be sent (it is marked written),
    /// false if it is not in the slab any more (its caller stopped waiting before it was
    /// written), its caller was settled meanwhile (deadline), or the stream failed.
    pub(crate) fn writing(&mut self, id: u64) -> bool {
        let Some((_, call)) = self.lookup(id) else {
            return false;
        };
        if call.wire != Wire::Queued {
            return false;
        }
        match call.caller {
            Caller::Waiting(_) => {
                call.wire = Wire::Written;
                true
            }
            // Settled past its deadline before it left: nothing will answer it.
            Caller::Settled(_) | Caller::Gone => {
                call.wire = Wire::Done;
                false
            }
        }
    }

    /// The caller of `id` looks for its outcome: takes it (and frees the slot if the server owes
    /// nothing more), or leaves `waker` to be woken when it comes. An id not in the slab is an
    /// outcome taken already.
    pub(crate) fn poll_outcome(&mut self, id: u64, waker: &Waker) -> Poll<Outcome> {
        let Some((index, call)) = self.lookup(id) else {
            return Poll::Ready(Err(ClientError::Protocol("outcome taken twice".into())));
        };
        match std::mem::replace(&mut call.caller, Caller::Gone) {
            Caller::Settled(outcome) => {
                if call.finished() {
                    self.release(index);
                }
                Poll::Ready(outcome)
            }
            Caller::Waiting(left) => {
                let left = match left {
                    Some(w) if w.will_wake(waker) => w,
                    _ => waker.clone(),
                };
                call.caller = Caller::Waiting(Some(left));
                Poll::Pending
            }
            Caller::Gone => Poll::Ready(Err(ClientError::Protocol("outcome taken twice".into()))),
        }
    }

    /// The caller of `id` stopped waiting: its slot is freed, or keeps a tombstone if the server
    /// may still answer it, so the late answer is discarded.
    pub(crate) fn cancel(&mut self, id: u64) {
        if let Some((index, call)) = self.lookup(id) {
            call.caller = Caller::Gone;
            call.gathered = Vec::new();
            if call.finished() {
                self.release(index);
            }
        }
    }

    /// A dump chunk that is not the last one for `id`: keep its entries.
    pub(crate) fn gather(
        &mut self,
        id: u64,
        entries: Vec<(Bytes, Bytes)>,
    ) -> Result<(), ClientError> {
        let Some((_, call)) = self.lookup(id).filter(|(_, c)| c.wire == Wire::Written) else {
            return Err(unknown(id));
        };
        if matches!(call.caller, Caller::Waiting(_)) {
            call.gathered.extend(entries);
        }
        Ok(())
    }

    /// The final answer to `id`: settles the call (if its caller still waits) and returns the
    /// caller's waker, to be woken once the lock is released; frees the slot if the caller is
    /// gone. An id that is not in flight is a protocol error.
    pub(crate) fn complete(&mut self, id: u64, reply: Reply) -> Result<Option<Waker>, ClientError> {
        let Some((index, call)) = self.lookup(id).filter(|(_, c)| c.wire == Wire::Written) else {
            return Err(unknown(id));
        };
        call.wire = Wire::Done;
        let reply = match reply {
            Reply::DumpChunk { entries, .. } if !call.gathered.is_empty() => {
                let mut all = std::mem::take(&mut call.gathered);
                all.extend(entries);
                Reply::DumpChunk {
                    entries: all,
                    last: true,
                }
            }
            other => other,
        };
        let waker = call.settle(Ok(reply));
        if call.finished() {
            self.release(index);
        }
        Ok(waker)
    }

    /// Settles every call whose deadline is at or before `now` with its past-deadline outcome
    /// (the slot stays as a tombstone until the answer comes), pushes their wakers onto `wake`,
    /// and returns the earliest deadline still ahead, which the sweeper is now armed for.
    pub(crate) fn expire(&mut self, now: Instant, wake: &mut Vec<Waker>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for slot in &mut self.slots {
            let Some(call) = slot.call.as_mut() else {
                continue;
            };
            let Some(due) = call.due else { continue };
            if !matches!(call.caller, Caller::Waiting(_)) {
                call.due = None;
            } else if due.at <= now {
                call.due = None;
                wake.extend(call.settle(due.outcome(call.is_write)));
            } else if next.is_none_or(|n| due.at < n) {
                next = Some(due.at);
            }
        }
        self.armed = next;
        next
    }

    /// Fails every call, pushing the wakers of their callers onto `wake`: a write that was sent
    /// may have been applied, so it is indeterminate; anything else (and a write never sent)
    /// failed with `err`. The stream takes no more calls; outcomes not yet taken stay until their
    /// callers take them.
    pub(crate) fn fail_all(&mut self, err: ClientError, wake: &mut Vec<Waker>) {
        for index in 0..self.slots.len() {
            let Some(call) = self.slots[index].call.as_mut() else {
                continue;
            };
            let outcome = if call.is_write && call.wire == Wire::Written {
                Ok(Reply::Indeterminate(format!(
                    "the write was sent but no answer came: {err}"
                )))
            } else {
                Err(err.clone())
            };
            call.wire = Wire::Done;
            wake.extend(call.settle(outcome));
            if call.finished() {
                self.release(index);
            }
        }
        self.armed = None;
        self.broken.get_or_insert(err);
    }

    /// Calls whose callers still wait for an answer.
    pub(crate) fn awaited(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.call
                    .as_ref()
                    .is_some_and(|c| matches!(c.caller, Caller::Waiting(_)))
            })
            .count()
    }

    /// The call in flight under `id`, with its slot index; `None` if `id` names another stream,
    /// a free slot, or an earlier use of the slot.
    fn lookup(&mut self, id: u64) -> Option<(usize, &mut Waiting)> {
        let (generation, stream, index) = split_id(id);
        if stream != self.stream {
            return None;
        }
        let index = index as usize;
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.call.as_mut().map(|c| (index, c))
    }

    /// Frees slot `index`: its id no longer matches, the slot is reused first.
    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.call = None;
        slot.generation = match slot.generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        // `index` came from a u32 id.
        self.free.push(index as u32);
    }
}

/// The error for an answer to a request that is not in flight.
fn unknown(id: u64) -> ClientError {
    ClientError::Protocol(format!("answer to unknown request {id}"))
}

#[cfg(test)]
#[path = "owed_tests.rs"]
mod tests;
