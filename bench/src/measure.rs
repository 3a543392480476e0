//! One measured run: how many calls, how many failed, over how long, and the latency
//! distribution, whoever generated the load.

use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub requests: u64,
    /// Non-2xx answers, socket errors, gRPC errors, or (orders) orders not CONFIRMED.
    pub errors: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.requests as f64 / secs
        }
    }

    pub fn from_histogram(
        h: &hdrhistogram::Histogram<u64>,
        errors: u64,
        elapsed: Duration,
    ) -> Self {
        Self {
            requests: h.len(),
            errors,
            elapsed,
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
        }
    }
}
