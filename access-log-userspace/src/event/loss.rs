//! Losses gathered into at most one LOST event a second: a sustained loss (a ring buffer too
//! small for the load) must say how much was lost without drowning the log in loss records.
//! The pipeline's losses (requests whose end was not seen) and the counts kept outside it
//! (records that could not be decoded, calls the kernel could not capture, events the syslog
//! forwarder dropped) are merged into one report until it is due.
use crate::{
    kernel::ConnectionKey,
    pipeline::{Loss, LossReason},
};

/// One second, in the records' nanoseconds.
const INTERVAL_NS: u64 = 1_000_000_000;

/// What a LOST event says: everything lost since the previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LossReport {
    /// When the last loss in it was noticed (monotonic nanoseconds).
    pub at: u64,
    /// Why, each reason once, in the order they came.
    pub reasons: Vec<&'static str>,
    /// Kernel records lost (ring buffer full).
    pub records: u64,
    /// The requests it ends, by number.
    pub requests: Vec<u64>,
    /// Their client connections, each once.
    pub connections: Vec<ConnectionKey>,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Calls or connections the kernel could not capture (tables full, unreadable buffers).
    pub not_captured: u64,
}

impl LossReport {
    fn note(&mut self, reason: &'static str, at: u64) {
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
        self.at = self.at.max(at);
    }
}

pub fn reason_text(reason: LossReason) -> &'static str {
    match reason {
        LossReason::RingFull => "ring buffer full",
        LossReason::ConnectionReplaced => "connection state lost",
        LossReason::ObserverStopped => "observer stopped",
        LossReason::Evicted => "state evicted",
        LossReason::FramesNotCaptured => "frames not captured",
    }
}

impl From<&Loss> for LossReport {
    fn from(loss: &Loss) -> LossReport {
        let mut report = LossReport {
            records: loss.records,
            requests: loss.requests.clone(),
            connections: loss.connections.clone(),
            ..LossReport::default()
        };
        report.note(reason_text(loss.reason), loss.at);
        report
    }
}

/// The losses not reported yet, and when the last report went out.
#[derive(Debug, Default)]
pub struct LossLedger {
    pending: Option<LossReport>,
    last_report: Option<u64>,
}

impl LossLedger {
    fn pending(&mut self) -> &mut LossReport {
        self.pending.get_or_insert_with(LossReport::default)
    }

    pub fn add(&mut self, loss: &Loss) {
        let pending = self.pending();
        pending.note(reason_text(loss.reason), loss.at);
        pending.records += loss.records;
        pending.requests.extend(&loss.requests);
        for connection in &loss.connections {
            if !pending.connections.contains(connection) {
                pending.connections.push(*connection);
            }
        }
    }

    /// Records that could not be decoded, `count` more of them.
    pub fn undecodable(&mut self, count: u64, at: u64) {
        if count > 0 {
            let pending = self.pending();
            pending.note("undecodable records", at);
            pending.undecodable += count;
        }
    }

    /// Calls the kernel could not capture, `count` more of them.
    pub fn not_captured(&mut self, count: u64, at: u64) {
        if count > 0 {
            let pending = self.pending();
            pending.note("not captured", at);
            pending.not_captured += count;
        }
    }

    /// The report, when there is one and a second has passed since the last (or there was
    /// none yet).
    pub fn due(&mut self, now: u64) -> Option<LossReport> {
        let ready = self
            .last_report
            .is_none_or(|last| now.saturating_sub(last) >= INTERVAL_NS);
        if !ready || self.pending.is_none() {
            return None;
        }
        self.last_report = Some(now);
        self.pending.take()
    }

    /// Whatever is pending, now (the end of the run).
    pub fn take(&mut self) -> Option<LossReport> {
        self.pending.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(reason: LossReason, at: u64, requests: &[u64], records: u64) -> Loss {
        Loss {
            reason,
            at,
            requests: requests.to_vec(),
            records,
            connections: requests.iter().map(|n| (7, *n as i32)).collect(),
        }
    }

    #[test]
    fn losses_within_a_second_are_one_report() {
        let mut ledger = LossLedger::default();
        ledger.add(&loss(LossReason::RingFull, 1_000, &[1, 2], 5));
        let first = ledger
            .due(1_000)
            .expect("the first loss is reported at once");
        assert_eq!((first.records, first.requests.clone()), (5, vec![1, 2]));
        ledger.add(&loss(LossReason::RingFull, 2_000, &[3], 7));
        ledger.add(&loss(LossReason::ConnectionReplaced, 3_000, &[4], 0));
        ledger.undecodable(2, 4_000);
        assert_eq!(ledger.due(500_000_000), None, "not a second since the last");
        let second = ledger.due(1_000_001_000).expect("a second later");
        assert_eq!(
            second,
            LossReport {
                at: 4_000,
                reasons: vec![
                    "ring buffer full",
                    "connection state lost",
                    "undecodable records"
                ],
                records: 7,
                requests: vec![3, 4],
                connections: vec![(7, 3), (7, 4)],
                undecodable: 2,
                not_captured: 0,
            }
        );
        assert_eq!(ledger.due(5_000_000_000), None, "nothing pending");
        ledger.not_captured(3, 6_000_000_000);
        assert_eq!(ledger.take().map(|r| r.not_captured), Some(3));
    }
}
