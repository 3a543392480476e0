//! The hash chain: each record's hash covers the previous record's hash and the record's own
//! content, so editing, deleting or reordering any record breaks every link after it.

use ordermesh_contracts::audit::{AuditEvent, AuditRecord};
use prost::Message;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hex SHA-256 over the previous hash, the sequence, the record time and the event's
/// protobuf encoding (deterministic: maps are encoded as ordered maps).
pub fn record_hash(
    prev_hash: &str,
    sequence: i64,
    record_time: &prost_types::Timestamp,
    event: &AuditEvent,
) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(sequence.to_be_bytes());
    h.update(record_time.seconds.to_be_bytes());
    h.update(record_time.nanos.to_be_bytes());
    h.update(event.encode_to_vec());
    hex::encode(h.finalize())
}

/// The first problem found walking a chain, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub sequence: i64,
    pub detail: String,
}

/// Walks records in sequence order, carrying the last good link.
#[derive(Debug, Clone)]
pub struct ChainWalker {
    pub expected_sequence: i64,
    pub prev_hash: String,
    pub checked: i64,
}

impl Default for ChainWalker {
    fn default() -> Self {
        Self {
            expected_sequence: 1,
            prev_hash: GENESIS.to_string(),
            checked: 0,
        }
    }
}

impl ChainWalker {
    /// Checks the next record; stops at the first broken link.
    pub fn step(&mut self, record: &AuditRecord) -> Result<(), Break> {
        let seq = self.expected_sequence;
        if record.sequence != seq {
            return Err(Break {
                sequence: seq,
                detail: format!("record {seq} is missing (found {} next)", record.sequence),
            });
        }
        if record.prev_hash != self.prev_hash {
            return Err(Break {
                sequence: seq,
                detail: format!("record {seq} does not link to record {}", seq - 1),
            });
        }
        let (Some(event), Some(time)) = (&record.event, &record.record_time) else {
            return Err(Break {
                sequence: seq,
                detail: format!("record {seq} lacks its event or time"),
            });
        };
        if record_hash(&record.prev_hash, seq, time, event) != record.hash {
            return Err(Break {
                sequence: seq,
                detail: format!("record {seq} was altered: its hash does not match its content"),
            });
        }
        self.prev_hash = record.hash.clone();
        self.expected_sequence += 1;
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let event = AuditEvent {
                    id: format!("e{seq}"),
                    actor: "users/1".into(),
                    resource: "orders/1".into(),
                    action: "order.created".into(),
                    source: "order-service".into(),
                    occur_time: None,
                    attributes: [("k".to_string(), "v".to_string())].into(),
                };
                let time = prost_types::Timestamp {
                    seconds: 1_700_000_000 + seq,
                    nanos: 0,
                };
                let hash = record_hash(&prev, seq, &time, &event);
                let r = AuditRecord {
                    sequence: seq,
                    event: Some(event),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    record_time: Some(time),
                };
                prev = hash;
                r
            })
            .collect()
    }

    fn walk(records: &[AuditRecord]) -> Result<i64, Break> {
        let mut w = ChainWalker::default();
        for r in records {
            w.step(r)?;
        }
        Ok(w.checked)
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(walk(&chain(5)), Ok(5));
    }

    #[test]
    fn an_edit_a_deletion_or_a_swap_is_found() {
        let mut edited = chain(5);
        edited[2].event.as_mut().unwrap().actor = "users/2".into();
        assert_eq!(walk(&edited).unwrap_err().sequence, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(walk(&deleted).unwrap_err().sequence, 2);

        let mut swapped = chain(5);
        swapped.swap(3, 4);
        assert_eq!(walk(&swapped).unwrap_err().sequence, 4);
    }
}
