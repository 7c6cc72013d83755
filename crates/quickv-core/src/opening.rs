//! The opening of a peer link, without I/O: the steps between the hellos and the lanes that both
//! the server's drivers and the simulator take, in one place (before, each side wrote them out
//! and the simulator mirrored the drivers "step for step").
//!
//! The primary sends its hello (built by [`hello_of`](crate::hello::hello_of)) and hands the
//! backup's answer to [`primary_answered`]: the backup's hello is checked
//! ([`admit`]) and the warm-start plan taken, or a refusal ends the link
//! (a refusal as a stale primary also fences this server's reads). The backup, having admitted
//! the primary's hello, takes the same plan with [`backup_plan`]. Either way the result says
//! which way the bucket transfer goes ([`Transfer`]); the drivers move the frames
//! (`transfer::encode_bucket` / `TransferReceiver`), answer a received transfer with
//! [`transfer_ack`], and tell the machine how it ended with [`transfer_ended`].

use quickv_proto::peer::{PeerHello, PeerMsg};

use crate::state::{admit, Machine, Plan, Refusal, Source};
use crate::store::BucketId;

/// Which way a link's bootstrap transfer goes, from this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// Both stores already agree: no transfer.
    Nothing,
    /// This side sends these buckets, then waits for the peer's `TransferAck`.
    Send(Vec<BucketId>),
    /// This side receives the peer's buckets (this many) and answers with a `TransferAck`.
    Receive(usize),
}

impl Transfer {
    /// The transfer `plan` means for the primary (`primary`) or the backup.
    pub fn of(plan: Plan, primary: bool) -> Transfer {
        match plan {
            Plan { buckets, .. } if buckets.is_empty() => Transfer::Nothing,
            Plan { source, buckets } if (source == Source::Primary) == primary => {
                Transfer::Send(buckets)
            }
            Plan { buckets, .. } => Transfer::Receive(buckets.len()),
        }
    }
}

/// The primary's side: the backup answered our hello (`ours`) with `answer`. Returns the backup's
/// hello, the link's epoch and the transfer; or why the link ends. A refusal as a stale primary
/// (the backup's goodbye says so, or our own check of its hello) fences this server until
/// it is restarted (it dials no more: [`Machine::fenced`]).
pub fn primary_answered(
    machine: &mut Machine,
    ours: &PeerHello,
    answer: PeerMsg,
) -> Result<(Box<PeerHello>, u64, Transfer), String> {
    let theirs = match answer {
        PeerMsg::Hello(theirs) => theirs,
        PeerMsg::Goodbye(reason) => {
            if Refusal::is_stale(&reason) {
                tracing::warn!(%reason, "refused by the backup as a stale primary; this server dials no more and serves no reads until it is restarted");
                machine.handle_refused_as_stale(reason.clone());
            }
            return Err(format!("the backup refused the link: {reason}"));
        }
        other => return Err(format!("expected the backup's hello, got {other:?}")),
    };
    let epoch = admit(ours, &theirs).map_err(|e| {
        tracing::warn!(reason = %e, "peer link refused");
        if matches!(e, Refusal::StaleEpoch { .. }) {
            machine.handle_refused_as_stale(e.to_string());
        }
        e.to_string()
    })?;
    let plan = machine.handle_hellos(ours, &theirs, epoch);
    Ok((theirs, epoch, Transfer::of(plan, true)))
}

/// The backup's side: the primary's hello `theirs` was admitted at `epoch` and our hello `ours`
/// is sent; the plan and this side's transfer.
pub fn backup_plan(
    machine: &mut Machine,
    theirs: &PeerHello,
    ours: &PeerHello,
    epoch: u64,
) -> (Plan, Transfer) {
    let plan = machine.handle_hellos(theirs, ours, epoch);
    (plan.clone(), Transfer::of(plan, false))
}

/// The receiver's answer to a transfer, from its verdict.
pub fn transfer_ack(verdict: &Result<(), String>) -> PeerMsg {
    PeerMsg::TransferAck {
        ok: verdict.is_ok(),
        reason: verdict.clone().err().unwrap_or_default(),
    }
}

/// A transfer ended well: the receiver verified every bucket (this store is the pair's data from
/// now on), or the sender got the peer's `TransferAck { ok: true }` (which the peer sends only
/// after reading our hello: the link's epoch is confirmed).
pub fn transfer_ended(machine: &mut Machine, received: bool) {
    if received {
        machine.handle_transfer_verified();
    } else {
        machine.handle_epoch_confirmed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Digest, BUCKETS};

    fn hello(primary: bool, epoch: u64, synced: bool, keys: u64) -> PeerHello {
        let mut digests = [Digest::default(); BUCKETS];
        if keys > 0 {
            digests[0] = Digest::of_entry(b"k", b"v");
        }
        PeerHello {
            primary,
            run_id: 1,
            pair: 0,
            epoch,
            synced,
            keys,
            digests,
        }
    }

    #[test]
    fn both_sides_take_opposite_ends_of_the_same_transfer() {
        let (p, b) = (hello(true, 3, true, 1), hello(false, 3, false, 0));
        let mut primary = Machine::new(true);
        primary.handle_link_up();
        let (_, epoch, sends) =
            primary_answered(&mut primary, &p, PeerMsg::Hello(Box::new(b.clone()))).expect("ok");
        assert_eq!(epoch, 4);
        assert!(matches!(sends, Transfer::Send(ref all) if all.len() == BUCKETS));
        let mut backup = Machine::new(false);
        backup.handle_link_up();
        assert_eq!(
            backup_plan(&mut backup, &p, &b, epoch).1,
            Transfer::Receive(BUCKETS)
        );
    }

    #[test]
    fn a_stale_refusal_fences_the_primarys_reads() {
        let ours = hello(true, 2, true, 1);
        let mut primary = Machine::new(true);
        primary.restore_epoch(2);
        primary.handle_link_up();
        let newer = hello(false, 5, true, 1);
        let refused = primary_answered(&mut primary, &ours, PeerMsg::Hello(Box::new(newer)));
        assert!(refused.is_err(), "{refused:?}");
        assert!(!primary.reads_allowed());
    }
}
