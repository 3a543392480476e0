//! Pacing for read-modify-write loops: read, decide, write conditionally on the version read,
//! and on a lost race read again.
//!
//! Writers that lose a race to the same item (a product's stock, a wallet's balance) and retry
//! at once meet again at the next commit, and a busy item can make one of them lose every
//! attempt. After each loss, a random pause that doubles with every loss spreads them out.

use std::time::Duration;

use rand::Rng;

use super::StoreError;

/// The longest pause after one loss; doubles per further loss up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(32);

/// The attempts of one read-modify-write loop.
///
/// ```ignore
/// let mut attempts = Attempts::new(8);
/// while attempts.next().await {
///     let (item, version) = read().await?;
///     match table.write(decide(item, version)).await {
///         Ok(_) => return Ok(..),
///         Err(e) => attempts.lost(e)?,
///     }
/// }
/// Err(attempts.exhausted(MyError::Contended))
/// ```
#[derive(Debug)]
pub struct Attempts {
    made: u32,
    max: u32,
    last: Option<StoreError>,
}

impl Attempts {
    pub fn new(max: u32) -> Self {
        Self {
            made: 0,
            max,
            last: None,
        }
    }

    /// Whether to make another attempt; after a lost one, first waits out a random pause.
    pub async fn next(&mut self) -> bool {
        if self.made >= self.max {
            return false;
        }
        if self.made > 0 {
            tokio::time::sleep(pause(self.made)).await;
        }
        self.made += 1;
        true
    }

    /// Records a failed write: `Ok` when it lost a race or met a busy or unavailable store
    /// (worth another attempt), the error itself otherwise.
    pub fn lost(&mut self, error: StoreError) -> Result<(), StoreError> {
        if error.is_condition_failed() || error.is_retryable() {
            self.last = Some(error);
            Ok(())
        } else {
            Err(error)
        }
    }

    /// The error once attempts ran out: if the store was unavailable on the last attempt,
    /// that (UNAVAILABLE) rather than `contended` (ABORTED), so a caller is not told to retry
    /// a race that was really an outage.
    pub fn exhausted<E: From<StoreError>>(self, contended: E) -> E {
        match self.last {
            Some(e @ StoreError::Unavailable(_)) => e.into(),
            _ => contended,
        }
    }
}

/// A uniformly random pause up to a bound that doubles with each loss.
fn pause(losses: u32) -> Duration {
    let bound = FIRST_PAUSE
        .saturating_mul(1 << losses.saturating_sub(1).min(16))
        .min(MAX_PAUSE);
    let micros = rand::rng().random_range(0..=bound.as_micros() as u64);
    Duration::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Store(String),
        Contended,
    }

    impl From<StoreError> for Outcome {
        fn from(e: StoreError) -> Self {
            Outcome::Store(e.to_string())
        }
    }

    #[test]
    fn pauses_are_bounded_and_grow_with_losses() {
        for _ in 0..200 {
            assert!(pause(1) <= FIRST_PAUSE);
            assert!(pause(3) <= FIRST_PAUSE * 4);
            assert!(pause(40) <= MAX_PAUSE);
        }
        let longest = (0..200).map(|_| pause(10)).max().unwrap_or_default();
        assert!(longest > FIRST_PAUSE * 4, "pauses should grow: {longest:?}");
    }

    #[tokio::test]
    async fn gives_exactly_max_attempts_then_reports_contention() {
        let mut attempts = Attempts::new(3);
        let mut made = 0;
        while attempts.next().await {
            made += 1;
            attempts
                .lost(StoreError::Conflict)
                .expect("a conflict is worth another attempt");
        }
        assert_eq!(made, 3);
        assert_eq!(attempts.exhausted(Outcome::Contended), Outcome::Contended);
    }

    #[tokio::test]
    async fn an_outage_on_the_last_attempt_is_reported_as_such() {
        let mut attempts = Attempts::new(2);
        while attempts.next().await {
            attempts
                .lost(StoreError::Unavailable("disk gone".into()))
                .expect("unavailable is worth another attempt");
        }
        let outcome = attempts.exhausted(Outcome::Contended);
        assert!(matches!(outcome, Outcome::Store(m) if m.contains("disk gone")));
    }

    #[test]
    fn other_errors_end_the_loop() {
        let mut attempts = Attempts::new(8);
        let refused = attempts.lost(StoreError::InvalidCursor);
        assert!(matches!(refused, Err(StoreError::InvalidCursor)));
    }
}
