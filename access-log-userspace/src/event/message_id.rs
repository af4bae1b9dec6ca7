//! MessageIDs: `urn:uuid:` names, unique per session without a syscall or a table. A session
//! draws two random keys once; a request's ID is derived from its number, an event's own ID
//! from the event's number, by a bijection, so every event of a request names it the same
//! way and no two IDs of a session are equal.
use std::sync::Arc;

use uuid::Uuid;

/// The session's keys.
pub struct MessageIds {
    requests: (u64, u64),
    events: (u64, u64),
    next_event: u64,
}

/// Odd, so multiplying by it permutes the numbers below 2^62.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;
/// Bits of the number space a UUID's low half keeps (two are the variant's).
const LOW: u64 = (1 << 62) - 1;

impl MessageIds {
    pub fn new() -> MessageIds {
        let random = || Uuid::new_v4().as_u64_pair();
        MessageIds {
            requests: random(),
            events: random(),
            next_event: 1,
        }
    }

    /// The MessageID of request `number`.
    pub fn request(&self, number: u64) -> Arc<str> {
        urn(self.requests, number)
    }

    /// A fresh MessageID for an event of its own (REQUEST_COMPLETE, ERROR, LOST).
    pub fn event(&mut self) -> Arc<str> {
        let number = self.next_event;
        self.next_event += 1;
        urn(self.events, number)
    }
}

impl Default for MessageIds {
    fn default() -> Self {
        MessageIds::new()
    }
}

fn urn((high, low): (u64, u64), number: u64) -> Arc<str> {
    // Version 4 and the RFC 4122 variant, as a random UUID has them; the low 62 bits are the
    // key plus the spread number, a bijection of the number below 2^62.
    let high = (high & !0xf000) | 0x4000;
    let low = (low.wrapping_add(number.wrapping_mul(SPREAD)) & LOW) | 0x8000_0000_0000_0000;
    let mut buffer = [0u8; uuid::fmt::Urn::LENGTH];
    Arc::from(
        Uuid::from_u64_pair(high, low)
            .urn()
            .encode_lower(&mut buffer) as &str,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_request_and_never_repeat() {
        let mut ids = MessageIds::new();
        assert_eq!(ids.request(7), ids.request(7));
        let mut seen = std::collections::HashSet::new();
        for number in 1..20_000 {
            assert!(seen.insert(ids.request(number)));
            assert!(seen.insert(ids.event()));
        }
        let id = ids.request(1);
        assert!(id.starts_with("urn:uuid:"), "{id}");
        assert_eq!(id.as_bytes()[9 + 14], b'4', "{id}");
        assert!(
            matches!(id.as_bytes()[9 + 19], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
    }
}
