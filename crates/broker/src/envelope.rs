//! How a message is stored: the `m` field holds a `tta.v1.BrokerMessage` without topic,
//! attempts and history (those live beside it, in fields the Lua scripts can update without
//! decoding protobuf), and history lines are decoded back into `DeliveryAttempt`s here.

use std::{collections::HashMap, time::SystemTime};

use prost::{Message, bytes::Bytes};
use prost_types::Timestamp;
use redis::Value;
use tta_proto::v1 as pb;

use crate::error::Error;

/// A stream entry as read from Redis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredEntry {
    /// The encoded message; decoding slices the payload out of it instead of copying it.
    pub message: Bytes,
    /// Deliveries that ended without an ack.
    pub ended_attempts: u32,
    pub history: String,
    /// Extra fields (dead letters carry cause, reason, group, at, p).
    pub extra: HashMap<String, String>,
}

impl StoredEntry {
    /// Builds an entry from the flat `[field, value, …]` array Redis returns.
    pub fn from_fields(fields: Value) -> Result<Self, Error> {
        let Value::Array(items) = fields else {
            return Err(Error::Corrupt(
                "stream entry fields are not an array".into(),
            ));
        };
        if items.len() % 2 != 0 {
            return Err(Error::Corrupt("odd number of stream entry fields".into()));
        }
        let mut entry = StoredEntry::default();
        let mut items = items.into_iter();
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            let value = owned_bytes(value)?;
            match bytes_of(&name)? {
                b"m" => entry.message = Bytes::from(value),
                b"a" => {
                    entry.ended_attempts = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|text| text.parse().ok())
                        .ok_or_else(|| Error::Corrupt("attempt count is not a number".into()))?;
                }
                b"h" => entry.history = String::from_utf8_lossy(&value).into_owned(),
                other => {
                    entry.extra.insert(
                        String::from_utf8_lossy(other).into_owned(),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
            }
        }
        if entry.message.is_empty() {
            return Err(Error::Corrupt("stream entry without a message".into()));
        }
        Ok(entry)
    }

    /// The wire message for a consumer or an operator: `attempts` counts the current delivery
    /// too; `with_history` adds the ended attempts.
    pub fn to_proto(
        &self,
        topic: &str,
        delivering: bool,
        with_history: bool,
    ) -> Result<pb::BrokerMessage, Error> {
        let mut message = pb::BrokerMessage::decode(self.message.clone())
            .map_err(|err| Error::Corrupt(format!("undecodable message: {err}")))?;
        message.topic = topic.to_owned();
        message.attempts = self.ended_attempts + u32::from(delivering);
        if with_history {
            message.history = parse_history(&self.history);
        }
        Ok(message)
    }
}

pub fn bytes_of(value: &Value) -> Result<&[u8], Error> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.as_bytes()),
        other => Err(Error::Corrupt(format!("expected a string, got {other:?}"))),
    }
}

fn owned_bytes(value: Value) -> Result<Vec<u8>, Error> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        other => Err(Error::Corrupt(format!("expected a string, got {other:?}"))),
    }
}

pub fn string_of(value: &Value) -> Result<String, Error> {
    bytes_of(value).map(|bytes| String::from_utf8_lossy(bytes).into_owned())
}

/// Encodes what is stored in `m`.
pub fn encode_stored(message: &pb::BrokerMessage) -> Vec<u8> {
    message.encode_to_vec()
}

pub fn timestamp_from_millis(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn timestamp_to_millis(timestamp: &Timestamp) -> i64 {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos / 1_000_000)
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Milliseconds since the epoch at which a stream entry id was created (its first part).
pub fn entry_id_millis(entry_id: &str) -> Option<i64> {
    entry_id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

/// Decodes the history lines written by the scripts (`attempt|group|consumer|ended_ms|outcome|reason`).
pub fn parse_history(text: &str) -> Vec<pb::DeliveryAttempt> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut parts = line.splitn(6, '|');
            let attempt = parts
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            let group = parts.next().unwrap_or_default().to_owned();
            let consumer = parts.next().unwrap_or_default().to_owned();
            let ended_at = parts
                .next()
                .and_then(|v| v.parse::<i64>().ok())
                .map(timestamp_from_millis);
            let outcome = match parts.next().unwrap_or_default() {
                "acked" => pb::AttemptOutcome::Acked,
                "nacked_transient" => pb::AttemptOutcome::NackedTransient,
                "nacked_permanent" => pb::AttemptOutcome::NackedPermanent,
                "lease_expired" => pb::AttemptOutcome::LeaseExpired,
                _ => pb::AttemptOutcome::Unspecified,
            };
            pb::DeliveryAttempt {
                attempt,
                group,
                consumer,
                delivered_at: None,
                ended_at,
                outcome: outcome as i32,
                reason: parts.next().unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn entries_round_trip_with_attempts_and_history() {
        let message = pb::BrokerMessage {
            id: "m1".into(),
            payload: b"hello".to_vec().into(),
            ..Default::default()
        };
        let fields = Value::Array(vec![
            bulk("m"),
            Value::BulkString(encode_stored(&message)),
            bulk("a"),
            bulk("2"),
            bulk("h"),
            bulk(
                "1|ipa|w1|1700000000000|nacked_transient|timeout\n2|ipa||1700000001000|lease_expired|visibility timeout expired",
            ),
        ]);
        let entry = StoredEntry::from_fields(fields).unwrap();
        assert_eq!(entry.ended_attempts, 2);

        let delivered = entry.to_proto("agent.ipa", true, false).unwrap();
        assert_eq!(
            (delivered.topic.as_str(), delivered.attempts),
            ("agent.ipa", 3)
        );
        assert!(delivered.history.is_empty());

        let inspected = entry.to_proto("agent.ipa", false, true).unwrap();
        assert_eq!(inspected.attempts, 2);
        assert_eq!(inspected.history.len(), 2);
        assert_eq!(inspected.history[0].reason, "timeout");
        assert_eq!(
            inspected.history[1].outcome,
            pb::AttemptOutcome::LeaseExpired as i32
        );
        assert_eq!(
            inspected.history[1].ended_at,
            Some(timestamp_from_millis(1_700_000_001_000))
        );
    }

    #[test]
    fn malformed_entries_are_reported_not_panicked_on() {
        assert!(StoredEntry::from_fields(Value::Nil).is_err());
        assert!(StoredEntry::from_fields(Value::Array(vec![bulk("m")])).is_err());
        assert!(
            StoredEntry::from_fields(Value::Array(vec![
                bulk("a"),
                bulk("x"),
                bulk("m"),
                bulk("q")
            ]))
            .is_err()
        );
        let garbage =
            StoredEntry::from_fields(Value::Array(vec![bulk("m"), bulk("\u{1}\u{2}garbage")]))
                .unwrap();
        assert!(garbage.to_proto("t", true, false).is_err());
    }

    #[test]
    fn timestamps_convert_both_ways() {
        let ts = timestamp_from_millis(1_700_000_000_123);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
        assert_eq!(timestamp_to_millis(&ts), 1_700_000_000_123);
        assert_eq!(entry_id_millis("1700000000123-7"), Some(1_700_000_000_123));
    }
}
