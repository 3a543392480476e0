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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readings_agree() {
        let (s, ms, ts) = (unix_seconds(), unix_millis(), timestamp());
        assert!((ms / 1000 - s).abs() <= 1);
        assert!((ts.seconds - s).abs() <= 1);
    }
}
