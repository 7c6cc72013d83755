//! Unit tests of [`super`], kept beside it so the module itself stays short.

use super::*;
use crate::store::Digest;

fn hello(primary: bool, synced: bool, fill: u128) -> PeerHello {
    PeerHello {
        primary,
        run_id: 1,
        pair: 9,
        epoch: 0,
        synced,
        keys: 0,
        digests: [Digest(fill); BUCKETS],
    }
}

#[test]
fn who_holds_the_data() {
    // Restarted primary (not current), backup current: the backup survived.
    let p = decide(&hello(true, false, 0), &hello(false, true, 7));
    assert_eq!(p.source, Source::Backup);
    assert_eq!(p.buckets.len(), BUCKETS);
    // Restarted backup: primary's data.
    assert_eq!(
        decide(&hello(true, true, 7), &hello(false, false, 0)).source,
        Source::Primary
    );
    // Link loss without restart: primary's data, only differing buckets.
    let mut b = hello(false, true, 7);
    b.digests[3] = Digest(9);
    let p = decide(&hello(true, true, 7), &b);
    assert_eq!(
        p,
        Plan {
            source: Source::Primary,
            buckets: vec![BucketId::new(3).expect("3")]
        }
    );
    // Both restarted, both empty: nothing to send.
    assert!(decide(&hello(true, false, 0), &hello(false, false, 0))
        .buckets
        .is_empty());
}

#[test]
fn lifecycle_and_permissions() {
    let mut m = Machine::new(true);
    assert!(!m.reads_allowed() && !m.writes_allowed());
    m.handle_link_up();
    let plan = m.handle_hellos(&hello(true, false, 0), &hello(false, true, 5), 1);
    assert_eq!(plan.source, Source::Backup);
    assert_eq!(
        m.state(),
        &State::Bootstrap {
            sending: false,
            buckets: BUCKETS
        }
    );
    assert!(
        !m.reads_allowed(),
        "a restarted primary must not serve reads before it synced"
    );
    m.handle_synced();
    assert_eq!(m.state(), &State::Sync);
    assert!(m.reads_allowed() && m.writes_allowed());
    m.handle_link_lost("ack timeout".into());
    assert_eq!(m.state(), &State::ColdStart);
    assert!(
        m.reads_allowed(),
        "a current store stays readable after a link loss"
    );
    assert!(!m.writes_allowed());
    m.handle_shutdown();
    m.handle_link_up();
    assert_eq!(m.state(), &State::ShuttingDown, "shutting down is terminal");
    let names: Vec<_> = std::iter::from_fn(|| m.poll_transition())
        .map(|t| t.to.name())
        .collect();
    assert_eq!(
        names,
        [
            "warm_start",
            "bootstrap",
            "sync",
            "cold_start",
            "shutting_down"
        ]
    );
}

#[test]
fn the_backup_never_accepts_writes_and_identical_stores_sync_at_once() {
    let mut m = Machine::new(false);
    m.handle_link_up();
    m.handle_hellos(&hello(true, false, 0), &hello(false, false, 0), 1);
    assert_eq!(
        m.state(),
        &State::WarmStart,
        "nothing to copy: no bootstrap"
    );
    m.handle_synced();
    assert_eq!(m.state(), &State::Sync);
    assert!(m.reads_allowed());
    assert!(!m.writes_allowed());
}

#[test]
fn a_verified_transfer_makes_the_receiver_current_without_synced() {
    // Finding 1: `Synced` may be overtaken or lost; the data decides.
    let mut m = Machine::new(false);
    m.handle_link_up();
    m.handle_hellos(&hello(true, true, 7), &hello(false, false, 0), 1);
    assert!(!m.current(), "nothing received yet");
    m.handle_transfer_verified();
    assert!(
        m.current(),
        "a verified copy of the primary's data is current"
    );
    m.handle_link_lost("primary died before Synced".into());
    assert!(m.current());
    let mut sender = Machine::new(true);
    sender.handle_link_up();
    sender.handle_hellos(&hello(true, false, 0), &hello(false, true, 7), 1);
    sender.handle_transfer_verified();
    assert!(
        sender.current(),
        "the restarted primary received the backup's data"
    );
}

#[test]
fn epochs_fence_a_stale_primary_but_not_a_restarted_one() {
    let with = |primary: bool, synced: bool, epoch: u64| PeerHello {
        epoch,
        ..hello(primary, synced, 0)
    };
    assert_eq!(admit(&with(true, true, 4), &with(false, true, 4)), Ok(5));
    assert_eq!(admit(&with(true, false, 0), &with(false, true, 9)), Ok(10));
    assert_eq!(admit(&with(true, true, 7), &with(false, false, 0)), Ok(8));
    assert_eq!(
        admit(&with(true, true, 3), &with(false, true, 4)),
        Err(Refusal::StaleEpoch {
            primary: 3,
            backup: 4
        })
    );
    let mut other = with(true, true, 4);
    other.pair = 1;
    assert!(matches!(
        admit(&other, &with(false, true, 4)),
        Err(Refusal::OtherPair { .. })
    ));
    assert!(admit(&with(true, true, 4), &with(true, true, 4)).is_err());
    let mut m = Machine::new(false);
    m.handle_link_up();
    m.handle_hellos(&with(true, true, 4), &with(false, true, 4), 5);
    assert_eq!(
        m.epoch(),
        0,
        "the backup adopts an epoch only once the primary has shown it did"
    );
    m.handle_synced();
    assert_eq!(m.epoch(), 5);
    let mut p = Machine::new(true);
    p.handle_link_up();
    p.handle_hellos(&with(true, true, 4), &with(false, true, 4), 5);
    assert_eq!(p.epoch(), 5, "the primary has the backup's hello");
}

#[test]
fn a_fresh_primary_does_not_replace_a_live_link_and_a_stale_one_stops_reading() {
    let grace = std::time::Duration::from_secs(3);
    let heard = Some(std::time::Duration::from_millis(200));
    let fresh = hello(true, false, 0);
    assert!(matches!(
        may_supersede(&fresh, heard, grace),
        Err(Refusal::LivePrimary { heard_ms: 200 })
    ));
    assert_eq!(may_supersede(&fresh, Some(grace), grace), Ok(()));
    assert_eq!(may_supersede(&fresh, None, grace), Ok(()));
    assert_eq!(may_supersede(&hello(true, true, 0), heard, grace), Ok(()));
    let stale = Refusal::StaleEpoch {
        primary: 1,
        backup: 2,
    };
    assert!(Refusal::is_stale(&stale.to_string()));
    let mut p = Machine::new(true);
    p.handle_link_up();
    p.handle_hellos(&hello(true, false, 0), &hello(false, false, 0), 1);
    p.handle_synced();
    p.handle_link_lost("superseded".into());
    assert!(p.reads_allowed());
    p.handle_refused_as_stale(stale.to_string());
    assert!(!p.reads_allowed() && !p.current());
    assert!(p
        .read_refusal()
        .is_some_and(|r| r.starts_with("stale primary")));
    let mut b = Machine::new(false);
    b.restore_epoch(4);
    assert_eq!(b.epoch(), 4, "a restarted server keeps its fence");
}

#[test]
fn a_backup_cut_off_too_long_refuses_reads_until_the_next_warm_start() {
    let mut m = Machine::new(false);
    m.handle_link_up();
    m.handle_hellos(&hello(true, false, 0), &hello(false, false, 0), 1);
    m.handle_synced();
    m.handle_link_lost("link lost".into());
    assert!(m.reads_allowed(), "within the ack timeout reads go on");
    assert_eq!(m.read_refusal(), None);
    m.handle_link_silent();
    assert!(!m.reads_allowed());
    assert!(
        m.read_refusal().is_some_and(|r| r.contains("cut off")),
        "the refusal says why: {:?}",
        m.read_refusal()
    );
    assert!(
        m.current(),
        "it still holds the data for the next warm start"
    );
    m.handle_link_up();
    m.handle_hellos(&hello(true, true, 0), &hello(false, true, 0), 2);
    assert!(m.reads_allowed());
    let mut p = Machine::new(true);
    p.handle_link_up();
    p.handle_hellos(&hello(true, false, 0), &hello(false, false, 0), 1);
    p.handle_synced();
    p.handle_link_lost("link lost".into());
    p.handle_link_silent();
    assert!(
        p.reads_allowed(),
        "the primary's reads are never fenced this way"
    );
}
