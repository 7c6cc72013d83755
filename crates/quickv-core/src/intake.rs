//! The receiving side of a bootstrap transfer, shared by both link machines (the backup receives
//! the primary's snapshot; a primary that is not current receives the backup's): buckets received
//! whole are applied one job at a time, in order, and the transfer is verified once the sender
//! said `TransferDone` and every job is done.

use std::collections::VecDeque;

use quickv_proto::peer::PeerMsg;

use crate::backup_events::JobId;
use crate::transfer::{BucketJob, Received, TransferReceiver};

/// A transfer being received: `running` is the job in flight, `queued` the buckets behind it;
/// `verdict` is set once the sender said `TransferDone`.
#[derive(Debug)]
pub(crate) struct Intake {
    receiver: TransferReceiver,
    running: Option<JobId>,
    queued: VecDeque<BucketJob>,
    verdict: Option<Result<(), String>>,
    /// Buckets the plan asked for.
    pub(crate) buckets: usize,
}

/// What a link machine does next with its [`Intake`].
#[derive(Debug)]
pub(crate) enum IntakeStep {
    /// The transfer failed (the sender's verdict or a malformed message).
    Refused(String),
    /// A job is in flight, or more messages are needed.
    Wait,
    /// Start this bucket's job; report its id with [`Intake::started`].
    Apply(BucketJob),
    /// Every bucket arrived and was applied: the copy is verified.
    Verified,
}

impl Intake {
    pub(crate) fn new(buckets: usize) -> Intake {
        Intake {
            receiver: TransferReceiver::default(),
            running: None,
            queued: VecDeque::new(),
            verdict: None,
            buckets,
        }
    }

    /// Whether the sender has not said `TransferDone` yet (control messages are transfer data).
    pub(crate) fn receiving(&self) -> bool {
        self.verdict.is_none()
    }

    /// Whether a received bucket waits behind the one being applied: the driver then stops
    /// reading (flow control holds the sender, so at most two buckets are in memory).
    pub(crate) fn backlogged(&self) -> bool {
        !self.queued.is_empty()
    }

    /// One control message of the transfer.
    pub(crate) fn feed(&mut self, msg: PeerMsg) {
        match self.receiver.feed(msg) {
            Received::More => {}
            Received::Bucket(job) => self.queued.push_back(job),
            Received::Done(verdict) => self.verdict = Some(verdict),
        }
    }

    /// The job `id` was started for the bucket [`Intake::next`] gave.
    pub(crate) fn started(&mut self, id: JobId) {
        self.running = Some(id);
    }

    /// Job `id` ended: whether it was this transfer's job in flight.
    pub(crate) fn finished(&mut self, id: JobId) -> bool {
        let ours = self.running == Some(id);
        if ours {
            self.running = None;
        }
        ours
    }

    /// What to do next.
    pub(crate) fn next(&mut self) -> IntakeStep {
        if let Some(Err(e)) = &self.verdict {
            return IntakeStep::Refused(e.clone());
        }
        if self.running.is_some() {
            return IntakeStep::Wait;
        }
        match self.queued.pop_front() {
            Some(job) => IntakeStep::Apply(job),
            None if self.verdict.is_some() => IntakeStep::Verified,
            None => IntakeStep::Wait,
        }
    }
}
