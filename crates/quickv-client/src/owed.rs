//! The calls a client stream owes answers to: a slab of slots that request ids index directly.
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
//! A slot is taken when its call is queued and freed when its answer arrives or the stream dies.
//! A call whose caller stopped waiting (future dropped, deadline passed) keeps a tombstone until
//! then: its late answer is recognised and discarded, and its id is not reused while the server
//! may still answer it. A call cancelled before it was written is freed by the writer, which
//! skips it.
//!
//! Deadlines: a slot carries its call's deadline, and one sweeper task per stream sleeps until
//! the earliest one ([`Owed::expire`]), instead of a timer per call.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ClientError;
use quickv_proto::Reply;

/// Where a call's outcome goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<Reply, ClientError>>;

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
    pub(crate) fn outcome(&self, is_write: bool) -> Result<Reply, ClientError> {
        past_deadline(is_write, self.budget)
    }
}

/// What a call past its deadline becomes: a write may have been applied.
pub(crate) fn past_deadline(is_write: bool, deadline: Duration) -> Result<Reply, ClientError> {
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

/// One call queued or written on a stream and not yet answered.
#[derive(Debug)]
struct Waiting {
    /// Where the answer goes; `None` once the caller stopped waiting (the answer is discarded).
    reply: Option<ReplyTx>,
    /// Writes become indeterminate, not failed, if the connection dies after they were sent.
    is_write: bool,
    /// Set by the writer when the request is encoded into a batch: from then on the server may
    /// answer it, so the slot stays until it does.
    written: bool,
    /// When the caller stops waiting, if ever.
    due: Option<Deadline>,
    /// Dump entries from chunks received so far.
    gathered: Vec<(Bytes, Bytes)>,
}

/// Requests queued or written on one stream and not yet answered.
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
    /// sweeper must be woken (the call's deadline comes before any it is armed for). Gives the
    /// answer channel back if the stream is broken (the call should go to a new connection) or,
    /// in theory, out of ids (2³² calls in flight on one stream).
    pub(crate) fn register(
        &mut self,
        reply: ReplyTx,
        is_write: bool,
        due: Option<Deadline>,
    ) -> Result<(u64, bool), ReplyTx> {
        if self.broken.is_some() {
            return Err(reply);
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let Ok(i) = u32::try_from(self.slots.len()) else {
                    return Err(reply);
                };
                self.slots.push(Slot {
                    generation: 1,
                    call: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.call = Some(Waiting {
            reply: Some(reply),
            is_write,
            written: false,
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
        Ok((request_id(slot.generation, self.stream, index), wake))
    }

    /// The writer is about to encode call `id`: true if it is to be sent (it is marked written),
    /// false if its caller stopped waiting before it was written (its slot is freed: nothing
    /// will answer it) or the stream failed meanwhile.
    pub(crate) fn writing(&mut self, id: u64) -> bool {
        let Some((index, call)) = self.lookup(id) else {
            return false;
        };
        if call.reply.is_none() {
            self.release(index);
            return false;
        }
        call.written = true;
        true
    }

    /// The caller of `id` stopped waiting: keep a tombstone so the late answer is discarded.
    pub(crate) fn cancel(&mut self, id: u64) {
        if let Some((_, call)) = self.lookup(id) {
            call.reply = None;
            call.gathered = Vec::new();
        }
    }

    /// A dump chunk that is not the last one for `id`: keep its entries.
    pub(crate) fn gather(
        &mut self,
        id: u64,
        entries: Vec<(Bytes, Bytes)>,
    ) -> Result<(), ClientError> {
        let Some((_, call)) = self.lookup(id).filter(|(_, c)| c.written) else {
            return Err(unknown(id));
        };
        if call.reply.is_some() {
            call.gathered.extend(entries);
        }
        Ok(())
    }

    /// The final answer to `id`: completes the call (if its caller still waits) and frees the
    /// slot. An id that is not in flight is a protocol error.
    pub(crate) fn complete(&mut self, id: u64, reply: Reply) -> Result<(), ClientError> {
        let Some((index, call)) = self.lookup(id).filter(|(_, c)| c.written) else {
            return Err(unknown(id));
        };
        let tx = call.reply.take();
        let gathered = std::mem::take(&mut call.gathered);
        self.release(index);
        let reply = match reply {
            Reply::DumpChunk { entries, .. } if !gathered.is_empty() => {
                let mut all = gathered;
                all.extend(entries);
                Reply::DumpChunk {
                    entries: all,
                    last: true,
                }
            }
            other => other,
        };
        if let Some(tx) = tx {
            let _ = tx.send(Ok(reply));
        }
        Ok(())
    }

    /// Completes every call whose deadline is at or before `now` with its past-deadline outcome
    /// (the slot stays as a tombstone until the answer comes), and returns the earliest deadline
    /// still ahead, which the sweeper is now armed for.
    pub(crate) fn expire(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for slot in &mut self.slots {
            let Some(call) = slot.call.as_mut() else {
                continue;
            };
            let Some(due) = call.due else { continue };
            if call.reply.is_none() {
                call.due = None;
            } else if due.at <= now {
                call.due = None;
                call.gathered = Vec::new();
                if let Some(tx) = call.reply.take() {
                    let _ = tx.send(due.outcome(call.is_write));
                }
            } else if next.is_none_or(|n| due.at < n) {
                next = Some(due.at);
            }
        }
        self.armed = next;
        next
    }

    /// Fails every call: a write that was sent may have been applied, so it is indeterminate;
    /// anything else (and a write never sent) failed with `err`. The stream takes no more calls.
    pub(crate) fn fail_all(&mut self, err: ClientError) {
        for slot in self.slots.drain(..) {
            let Some(Waiting {
                reply: Some(reply),
                is_write,
                written,
                ..
            }) = slot.call
            else {
                continue;
            };
            let outcome = if is_write && written {
                Ok(Reply::Indeterminate(format!(
                    "the write was sent but no answer came: {err}"
                )))
            } else {
                Err(err.clone())
            };
            let _ = reply.send(outcome);
        }
        self.free.clear();
        self.armed = None;
        self.broken.get_or_insert(err);
    }

    /// Calls whose callers still wait for an answer.
    pub(crate) fn awaited(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.call.as_ref().is_some_and(|c| c.reply.is_some()))
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
mod tests {
    use super::*;

    fn call(
        owed: &mut Owed,
        due: Option<Deadline>,
    ) -> (u64, oneshot::Receiver<Result<Reply, ClientError>>) {
        let (tx, rx) = oneshot::channel();
        let (id, _) = owed.register(tx, false, due).expect("registered");
        (id, rx)
    }

    #[test]
    fn ids_are_never_zero_and_name_their_stream() {
        let mut a = Owed::new(0);
        let mut b = Owed::new(1);
        let (ia, _ra) = call(&mut a, None);
        let (ib, _rb) = call(&mut b, None);
        assert_ne!(ia, 0);
        assert_ne!(ia, ib);
        assert!(a.writing(ia));
        // An answer to the other stream's id is unknown here.
        assert!(matches!(
            a.complete(ib, Reply::Ok),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn an_answer_completes_its_call_and_frees_the_slot_for_reuse_under_a_new_id() {
        let mut owed = Owed::new(3);
        let (id, mut rx) = call(&mut owed, None);
        assert!(owed.writing(id));
        owed.complete(id, Reply::Value(Bytes::from_static(b"v")))
            .expect("known");
        assert_eq!(
            rx.try_recv().expect("answered"),
            Ok(Reply::Value(Bytes::from_static(b"v")))
        );
        assert_eq!(owed.awaited(), 0);

        let (again, _rx) = call(&mut owed, None);
        assert_eq!(
            again & 0xffff_ffff,
            id & 0xffff_ffff,
            "the freed slot is reused"
        );
        assert_ne!(again, id, "under a new id");
        assert!(owed.writing(again));
        // The old id is stale: a second answer to it is a protocol error, and does not
        // complete the call now using the slot.
        match owed.complete(id, Reply::Ok) {
            Err(ClientError::Protocol(msg)) => assert!(msg.contains("unknown request"), "{msg}"),
            other => panic!("stale id accepted: {other:?}"),
        }
        assert_eq!(owed.awaited(), 1);
    }

    #[test]
    fn an_answer_to_an_id_never_issued_or_not_yet_written_is_a_protocol_error() {
        let mut owed = Owed::new(0);
        assert!(matches!(
            owed.complete(12345, Reply::Ok),
            Err(ClientError::Protocol(_))
        ));
        let (id, _rx) = call(&mut owed, None);
        assert!(matches!(
            owed.complete(id, Reply::Ok),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            owed.gather(id, Vec::new()),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn a_cancelled_written_call_keeps_its_slot_until_the_late_answer() {
        let mut owed = Owed::new(0);
        let (id, rx) = call(&mut owed, None);
        assert!(owed.writing(id));
        drop(rx);
        owed.cancel(id);
        assert_eq!(owed.awaited(), 0);
        // The slot is not reused while the server may still answer.
        let (other, _rx2) = call(&mut owed, None);
        assert_ne!(other & 0xffff_ffff, id & 0xffff_ffff);
        // The late answer is recognised and discarded; then the slot is free.
        owed.complete(id, Reply::Ok).expect("late answer accepted");
        let (reused, _rx3) = call(&mut owed, None);
        assert_eq!(reused & 0xffff_ffff, id & 0xffff_ffff);
    }

    #[test]
    fn a_call_cancelled_before_it_was_written_is_skipped_and_freed() {
        let mut owed = Owed::new(0);
        let (id, rx) = call(&mut owed, None);
        drop(rx);
        owed.cancel(id);
        assert!(!owed.writing(id), "a cancelled call is not sent");
        let (reused, _rx) = call(&mut owed, None);
        assert_eq!(reused & 0xffff_ffff, id & 0xffff_ffff);
        assert!(matches!(
            owed.complete(id, Reply::Ok),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn dump_chunks_are_gathered_and_merged_into_the_last() {
        let mut owed = Owed::new(0);
        let (id, mut rx) = call(&mut owed, None);
        assert!(owed.writing(id));
        let kv = |k: &'static [u8]| (Bytes::from_static(k), Bytes::from_static(b"v"));
        owed.gather(id, vec![kv(b"a")]).expect("chunk");
        owed.gather(id, vec![kv(b"b")]).expect("chunk");
        owed.complete(
            id,
            Reply::DumpChunk {
                entries: vec![kv(b"c")],
                last: true,
            },
        )
        .expect("last chunk");
        assert_eq!(
            rx.try_recv().expect("answered"),
            Ok(Reply::DumpChunk {
                entries: vec![kv(b"a"), kv(b"b"), kv(b"c")],
                last: true
            })
        );
    }

    #[test]
    fn expiry_answers_reads_with_timeout_and_writes_with_indeterminate_and_rearms() {
        // Time is a parameter here: deadlines are built from a base instant, `expire` is told
        // what time it is.
        let t0 = Instant::now();
        let due = |ms: u64| {
            Some(Deadline {
                at: t0 + Duration::from_millis(ms),
                budget: Duration::from_millis(ms),
            })
        };
        let mut owed = Owed::new(0);
        let (tx, mut read) = oneshot::channel();
        let (r, wake) = owed.register(tx, false, due(5000)).expect("registered");
        assert!(wake, "the first deadline arms the sweeper");
        let (tx, mut write) = oneshot::channel();
        let (w, wake) = owed.register(tx, true, due(100)).expect("registered");
        assert!(wake, "an earlier deadline re-arms the sweeper");
        let (tx, _later) = oneshot::channel();
        let (_, wake) = owed.register(tx, false, due(5000)).expect("registered");
        assert!(!wake, "a later deadline needs no wake-up");
        let (tx, mut forever) = oneshot::channel();
        let (f, wake) = owed.register(tx, false, None).expect("registered");
        assert!(!wake, "no deadline, no wake-up");
        assert!(owed.writing(r) && owed.writing(w) && owed.writing(f));

        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(owed.expire(at(99)), Some(at(100)), "nothing overdue yet");
        assert!(write.try_recv().is_err());
        assert_eq!(owed.expire(at(100)), Some(at(5000)));
        match write.try_recv().expect("expired") {
            Ok(Reply::Indeterminate(msg)) => assert!(msg.contains("deadline"), "{msg}"),
            other => panic!("write past its deadline: {other:?}"),
        }
        assert!(read.try_recv().is_err(), "the long call still waits");
        assert_eq!(owed.expire(at(6000)), None);
        match read.try_recv() {
            Ok(Err(ClientError::Timeout(msg))) => assert!(msg.contains("5s"), "{msg}"),
            other => panic!("read past its deadline: {other:?}"),
        }
        assert!(
            forever.try_recv().is_err(),
            "a call without deadline never expires"
        );
        assert_eq!(owed.awaited(), 1);
        // Expired calls keep their tombstones: the late answers are accepted and dropped.
        owed.complete(w, Reply::Ok).expect("late answer");
        owed.complete(r, Reply::Ok).expect("late answer");
    }

    #[test]
    fn failing_the_stream_makes_sent_writes_indeterminate_and_refuses_new_calls() {
        let mut owed = Owed::new(0);
        let (tx, mut sent_write) = oneshot::channel();
        let (id, _) = owed.register(tx, true, None).expect("registered");
        assert!(owed.writing(id));
        let (tx, mut queued_write) = oneshot::channel();
        owed.register(tx, true, None).expect("registered");
        let (tx, mut read) = oneshot::channel();
        let (id, _) = owed.register(tx, false, None).expect("registered");
        assert!(owed.writing(id));

        owed.fail_all(ClientError::Connection("gone".into()));
        assert!(matches!(
            sent_write.try_recv(),
            Ok(Ok(Reply::Indeterminate(_)))
        ));
        assert!(matches!(
            queued_write.try_recv(),
            Ok(Err(ClientError::Connection(_)))
        ));
        assert!(matches!(
            read.try_recv(),
            Ok(Err(ClientError::Connection(_)))
        ));
        let (tx, _rx) = oneshot::channel();
        assert!(
            owed.register(tx, false, None).is_err(),
            "a broken stream takes no calls"
        );
        assert!(!owed.writing(id));
    }
}
