//! The slab of one stream, driven by hand: ids, outcomes, tombstones, deadlines, a dead stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

use super::*;

/// A waker that counts its wake-ups, to check that an outcome wakes its caller exactly once.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn counting() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    (count.clone(), Waker::from(count))
}

fn call(owed: &mut Owed, due: Option<Deadline>) -> u64 {
    owed.register(false, due, None).expect("registered").0
}

/// The caller's look at its slot: `None` while it waits.
fn outcome(owed: &mut Owed, id: u64) -> Option<Outcome> {
    match owed.poll_outcome(id, Waker::noop()) {
        Poll::Ready(o) => Some(o),
        Poll::Pending => None,
    }
}

#[test]
fn ids_are_never_zero_and_name_their_stream() {
    let mut a = Owed::new(0);
    let mut b = Owed::new(1);
    let ia = call(&mut a, None);
    let ib = call(&mut b, None);
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
fn an_answer_wakes_its_caller_once_and_frees_the_slot_when_taken() {
    let mut owed = Owed::new(3);
    let id = call(&mut owed, None);
    let (count, waker) = counting();
    assert!(owed.poll_outcome(id, &waker).is_pending());
    assert!(owed.writing(id));
    let woken = owed
        .complete(id, Reply::Value(Bytes::from_static(b"v")))
        .expect("known");
    woken.expect("the caller's waker").wake();
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    assert_eq!(owed.awaited(), 0);
    // Until the caller takes the outcome, the slot stays.
    let other = call(&mut owed, None);
    assert_ne!(other & 0xffff_ffff, id & 0xffff_ffff);
    assert_eq!(
        outcome(&mut owed, id),
        Some(Ok(Reply::Value(Bytes::from_static(b"v"))))
    );

    let again = call(&mut owed, None);
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
    assert_eq!(owed.awaited(), 2);
    assert_eq!(outcome(&mut owed, again), None, "still waiting");
}

#[test]
fn a_second_answer_to_an_answered_call_is_a_protocol_error() {
    let mut owed = Owed::new(0);
    let id = call(&mut owed, None);
    assert!(owed.writing(id));
    owed.complete(id, Reply::Ok).expect("first answer");
    assert!(matches!(
        owed.complete(id, Reply::Exists),
        Err(ClientError::Protocol(_))
    ));
    assert_eq!(outcome(&mut owed, id), Some(Ok(Reply::Ok)));
}

#[test]
fn an_answer_to_an_id_never_issued_or_not_yet_written_is_a_protocol_error() {
    let mut owed = Owed::new(0);
    assert!(matches!(
        owed.complete(12345, Reply::Ok),
        Err(ClientError::Protocol(_))
    ));
    let id = call(&mut owed, None);
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
    let id = call(&mut owed, None);
    assert!(owed.writing(id));
    owed.cancel(id);
    assert_eq!(owed.awaited(), 0);
    // The slot is not reused while the server may still answer.
    let other = call(&mut owed, None);
    assert_ne!(other & 0xffff_ffff, id & 0xffff_ffff);
    // The late answer is recognised and discarded (nobody to wake); then the slot is free.
    let woken = owed.complete(id, Reply::Ok).expect("late answer accepted");
    assert!(woken.is_none());
    let reused = call(&mut owed, None);
    assert_eq!(reused & 0xffff_ffff, id & 0xffff_ffff);
}

#[test]
fn a_call_cancelled_before_it_was_written_is_freed_and_skipped() {
    let mut owed = Owed::new(0);
    let id = call(&mut owed, None);
    owed.cancel(id);
    let reused = call(&mut owed, None);
    assert_eq!(reused & 0xffff_ffff, id & 0xffff_ffff);
    assert!(!owed.writing(id), "a cancelled call is not sent");
    assert!(matches!(
        owed.complete(id, Reply::Ok),
        Err(ClientError::Protocol(_))
    ));
    assert!(owed.writing(reused), "the slot's new call is");
}

#[test]
fn dump_chunks_are_gathered_and_merged_into_the_last() {
    let mut owed = Owed::new(0);
    let id = call(&mut owed, None);
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
        outcome(&mut owed, id),
        Some(Ok(Reply::DumpChunk {
            entries: vec![kv(b"a"), kv(b"b"), kv(b"c")],
            last: true
        }))
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
    let (r, wake) = owed.register(false, due(5000), None).expect("registered");
    assert!(wake, "the first deadline arms the sweeper");
    let (w, wake) = owed.register(true, due(100), None).expect("registered");
    assert!(wake, "an earlier deadline re-arms the sweeper");
    let (_, wake) = owed.register(false, due(5000), None).expect("registered");
    assert!(!wake, "a later deadline needs no wake-up");
    let (f, wake) = owed.register(false, None, None).expect("registered");
    assert!(!wake, "no deadline, no wake-up");
    let (count, waker) = counting();
    assert!(owed.poll_outcome(w, &waker).is_pending());
    assert!(owed.writing(r) && owed.writing(w) && owed.writing(f));

    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut wake = Vec::new();
    assert_eq!(
        owed.expire(at(99), &mut wake),
        Some(at(100)),
        "nothing overdue yet"
    );
    assert!(owed.poll_outcome(w, &waker).is_pending() && wake.is_empty());
    assert_eq!(owed.expire(at(100), &mut wake), Some(at(5000)));
    assert_eq!(wake.len(), 1, "the write's caller is woken");
    wake.drain(..).for_each(Waker::wake);
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    match outcome(&mut owed, w) {
        Some(Ok(Reply::Indeterminate(msg))) => assert!(msg.contains("deadline"), "{msg}"),
        other => panic!("write past its deadline: {other:?}"),
    }
    assert!(outcome(&mut owed, r).is_none(), "the long call still waits");
    assert_eq!(owed.expire(at(6000), &mut wake), None);
    match outcome(&mut owed, r) {
        Some(Err(ClientError::Timeout(msg))) => assert!(msg.contains("5s"), "{msg}"),
        other => panic!("read past its deadline: {other:?}"),
    }
    assert!(
        outcome(&mut owed, f).is_none(),
        "a call without deadline never expires"
    );
    assert_eq!(owed.awaited(), 1);
    // Expired calls keep their tombstones: the late answers are accepted and dropped.
    owed.complete(w, Reply::Ok).expect("late answer");
    owed.complete(r, Reply::Ok).expect("late answer");
}

#[test]
fn a_call_past_its_deadline_before_it_was_written_is_not_sent() {
    let t0 = Instant::now();
    let due = Some(Deadline {
        at: t0,
        budget: Duration::from_millis(1),
    });
    let mut owed = Owed::new(0);
    let id = call(&mut owed, due);
    owed.expire(t0, &mut Vec::new());
    assert!(!owed.writing(id), "settled before it left: skipped");
    assert!(matches!(
        outcome(&mut owed, id),
        Some(Err(ClientError::Timeout(_)))
    ));
    let reused = call(&mut owed, None);
    assert_eq!(
        reused & 0xffff_ffff,
        id & 0xffff_ffff,
        "nothing owed: freed"
    );
}

#[test]
fn failing_the_stream_makes_sent_writes_indeterminate_and_refuses_new_calls() {
    let mut owed = Owed::new(0);
    let (sent_write, _) = owed.register(true, None, None).expect("registered");
    assert!(owed.writing(sent_write));
    let (queued_write, _) = owed.register(true, None, None).expect("registered");
    let (read, _) = owed.register(false, None, None).expect("registered");
    assert!(owed.writing(read));
    let (count, waker) = counting();
    assert!(owed.poll_outcome(read, &waker).is_pending());

    let mut wake = Vec::new();
    owed.fail_all(ClientError::Connection("gone".into()), &mut wake);
    assert_eq!(
        wake.len(),
        1,
        "only the caller that had polled left a waker"
    );
    wake.drain(..).for_each(Waker::wake);
    assert_eq!(count.0.load(Ordering::Relaxed), 1);
    assert!(matches!(
        outcome(&mut owed, sent_write),
        Some(Ok(Reply::Indeterminate(_)))
    ));
    assert!(matches!(
        outcome(&mut owed, queued_write),
        Some(Err(ClientError::Connection(_)))
    ));
    assert!(matches!(
        outcome(&mut owed, read),
        Some(Err(ClientError::Connection(_)))
    ));
    assert!(
        owed.register(false, None, None).is_none(),
        "a broken stream takes no calls"
    );
    assert!(!owed.writing(read));
}
