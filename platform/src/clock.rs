//! The one clock every crate reads wall time from: unix seconds and milliseconds as the
//! store, tokens and leases record them, and protobuf timestamps for messages.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current time in unix seconds.
pub fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Current time in unix milliseconds.
pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Current time as a protobuf timestamp.
pub fn timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// Unix milliseconds as a protobuf timestamp; `None` for 0 or less (a time never set).
pub fn timestamp_from_millis(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

/// A protobuf timestamp in unix milliseconds (0 when unset).
pub fn millis_of(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |t| {
        t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readings_agree() {
        let (s, ms, ts) = (unix_seconds(), unix_millis(), timestamp());
        assert!((ms / 1000 - s).abs() <= 1);
        assert!((ts.seconds - s).abs() <= 1);
    }

    #[test]
    fn milliseconds_and_timestamps_round_trip() {
        let ts = timestamp_from_millis(1_700_000_000_123).unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
        assert_eq!(millis_of(Some(&ts)), 1_700_000_000_123);
        assert_eq!(timestamp_from_millis(0), None);
        assert_eq!(millis_of(None), 0);
    }
}
