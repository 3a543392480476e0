//! The services behind the gateway: one channel per workload (mTLS, balanced over every
//! endpoint configured), a deadline on every call (sent as `grpc-timeout`), one retry for
//! safe methods drawn from a per-backend retry budget (so retries cannot multiply the load
//! on a struggling backend), and a circuit breaker per backend that fails fast while a
//! backend is down and lets a trial call through after a cool-down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordermesh_contracts::descriptors::MethodInfo;
use ordermesh_platform::client::MeshChannel;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tower::retry::budget::{Budget, TpsBudget};

use crate::codec::RawCodec;
use crate::gateway_metrics::{GatewayMetrics, TransitionLabels};

/// Consecutive failures that open a circuit.
const TRIP_AFTER: u32 = 5;
/// How long an open circuit first fails fast before letting one trial call through; each
/// failed trial doubles it, up to `MAX_COOL_DOWN` (linkerd's consecutive-failures breaker).
const COOL_DOWN: Duration = Duration::from_secs(5);
const MAX_COOL_DOWN: Duration = Duration::from_secs(15);
/// Retries allowed per backend: 20% of the calls of the last 10 s, plus 5 a second so a
/// quiet gateway can still retry a blip.
const RETRY_WINDOW: Duration = Duration::from_secs(10);
const RETRY_MIN_PER_SEC: u32 = 5;
const RETRY_RATIO: f32 = 0.2;

fn retry_budget() -> TpsBudget {
    TpsBudget::new(RETRY_WINDOW, RETRY_MIN_PER_SEC, RETRY_RATIO)
}

#[derive(Debug)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    /// `trips`: consecutive openings without a success between them.
    Open {
        until: Instant,
        trips: u32,
    },
    /// One trial call is out since `since`.
    HalfOpen {
        since: Instant,
        trips: u32,
    },
}

impl BreakerState {
    fn name(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    backend: String,
    metrics: Arc<GatewayMetrics>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new("backend", Arc::default())
    }
}

/// A status the backend sent travels in trailers and has no source; one with a source was
/// made on this side from a transport failure: the connection closed or broke under the call
/// (a replica that shut down or died mid-call), which tonic reports as UNKNOWN or CANCELLED.
/// That is the backend being unavailable (retryable), or its deadline having passed.
fn transport_failure_as_unavailable(s: Status, workload: &str) -> Status {
    use std::error::Error as _;
    let Some(source) = s.source() else {
        return s;
    };
    if source.is::<tonic::TimeoutExpired>() {
        return Status::deadline_exceeded(format!("{workload} did not answer in time"));
    }
    match s.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal => {
            Status::unavailable(format!("{workload}: the connection failed: {source}"))
        }
        _ => s,
    }
}

/// Failures that say the backend (not the request) is in trouble.
fn is_backend_failure(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

fn cool_down(trips: u32) -> Duration {
    COOL_DOWN
        .saturating_mul(1u32 << trips.saturating_sub(1).min(8))
        .min(MAX_COOL_DOWN)
}

impl Breaker {
    pub fn new(backend: &str, metrics: Arc<GatewayMetrics>) -> Self {
        metrics
            .breaker_open
            .get_or_create(&GatewayMetrics::backend(backend))
            .set(0);
        Self {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            backend: backend.to_string(),
            metrics,
        }
    }

    /// Moves to `next`, counting a change of state.
    fn enter(&self, state: &mut BreakerState, next: BreakerState) {
        if std::mem::discriminant(state) != std::mem::discriminant(&next) {
            self.metrics
                .breaker_transitions
                .get_or_create(&TransitionLabels {
                    backend: self.backend.clone(),
                    state: next.name().to_string(),
                })
                .inc();
            let open = i64::from(!matches!(next, BreakerState::Closed { .. }));
            self.metrics
                .breaker_open
                .get_or_create(&GatewayMetrics::backend(&self.backend))
                .set(open);
            if matches!(next, BreakerState::Open { .. }) {
                tracing::warn!(backend = %self.backend, "circuit opened");
            }
        }
        *state = next;
    }

    /// Whether a call may go through now. A trial that never reports back (its caller went
    /// away) counts as failed once a cool-down has passed, so the circuit cannot stick.
    pub fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match *state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until, trips } if now >= until => {
                self.enter(&mut state, BreakerState::HalfOpen { since: now, trips });
                true
            }
            BreakerState::HalfOpen { since, trips } if now >= since + cool_down(trips) => {
                // The last trial was dropped: treat it as failed, and try again.
                *state = BreakerState::HalfOpen {
                    since: now,
                    trips: trips + 1,
                };
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => false,
        }
    }

    pub fn record(&self, ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let next = match (&*state, ok) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 < TRIP_AFTER => {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            (BreakerState::HalfOpen { trips, .. } | BreakerState::Open { trips, .. }, false) => {
                let trips = trips + 1;
                BreakerState::Open {
                    until: Instant::now() + cool_down(trips),
                    trips,
                }
            }
            (BreakerState::Closed { .. }, false) => BreakerState::Open {
                until: Instant::now() + cool_down(1),
                trips: 1,
            },
        };
        self.enter(&mut state, next);
    }

    pub fn is_open(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|p| p.into_inner()),
            BreakerState::Open { .. }
        )
    }
}

pub struct Backend {
    pub workload: &'static str,
    pub channel: MeshChannel,
    pub breaker: Breaker,
    retries: TpsBudget,
}

pub struct Backends {
    by_package: HashMap<String, Backend>,
    pub deadline: Duration,
    pub metrics: Arc<GatewayMetrics>,
}

impl Backends {
    pub fn new(deadline: Duration, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            by_package: HashMap::new(),
            deadline,
            metrics,
        }
    }

    pub fn add(&mut self, package: &str, workload: &'static str, channel: MeshChannel) {
        self.by_package.insert(
            package.to_string(),
            Backend {
                workload,
                channel,
                breaker: Breaker::new(workload, self.metrics.clone()),
                retries: retry_budget(),
            },
        );
    }

    pub fn get(&self, package: &str) -> Option<&Backend> {
        self.by_package.get(package)
    }

    pub fn all(&self) -> impl Iterator<Item = &Backend> {
        self.by_package.values()
    }

    fn backend(&self, rpc: &MethodInfo) -> Result<&Backend, Status> {
        self.by_package
            .get(&rpc.package)
            .ok_or_else(|| Status::unimplemented("no backend serves this method"))
    }

    fn request(&self, body: Bytes, metadata: &MetadataMap) -> tonic::Request<Bytes> {
        let mut req = tonic::Request::new(body);
        *req.metadata_mut() = metadata.clone();
        req.set_timeout(self.deadline);
        req
    }

    /// A unary call with raw message bytes; `safe` methods are retried once on UNAVAILABLE
    /// when the backend's retry budget allows.
    pub async fn unary(
        &self,
        rpc: &MethodInfo,
        body: Bytes,
        metadata: &MetadataMap,
        safe: bool,
    ) -> Result<Bytes, Status> {
        let backend = self.backend(rpc)?;
        let path: http::uri::PathAndQuery = rpc
            .path
            .parse()
            .map_err(|_| Status::internal("bad method path"))?;
        let attempts = if safe { 2 } else { 1 };
        backend.retries.deposit();
        let mut last = Status::unavailable("backend unavailable");
        for attempt in 0..attempts {
            if !backend.breaker.admit() {
                return Err(Status::unavailable(format!(
                    "{} is unavailable (circuit open)",
                    backend.workload
                )));
            }
            let mut grpc = tonic::client::Grpc::new(backend.channel.clone());
            let call = async {
                match grpc.ready().await {
                    Ok(()) => grpc
                        .unary(self.request(body.clone(), metadata), path.clone(), RawCodec)
                        .await
                        .map(tonic::Response::into_inner),
                    Err(e) => Err(Status::unavailable(format!(
                        "{} is unavailable: {e}",
                        backend.workload
                    ))),
                }
            };
            // `grpc-timeout` tells the backend; this holds the line when the backend (or the
            // network) never answers at all.
            let result = tokio::time::timeout(self.deadline, call)
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "{} did not answer within {} ms",
                        backend.workload,
                        self.deadline.as_millis()
                    )))
                })
                .map_err(|s| transport_failure_as_unavailable(s, backend.workload));
            match result {
                Ok(bytes) => {
                    backend.breaker.record(true);
                    return Ok(bytes);
                }
                Err(status) => {
                    let failure = is_backend_failure(&status);
                    backend.breaker.record(!failure);
                    if !(failure && status.code() == tonic::Code::Unavailable)
                        || attempt + 1 == attempts
                    {
                        return Err(status);
                    }
                    let labels = GatewayMetrics::backend(backend.workload);
                    if !backend.retries.withdraw() {
                        self.metrics
                            .retry_budget_exhausted
                            .get_or_create(&labels)
                            .inc();
                        return Err(status);
                    }
                    self.metrics.retries.get_or_create(&labels).inc();
                    last = status;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(last)
    }

    /// A server-streaming call; the deadline bounds opening it, not its life.
    pub async fn server_streaming(
        &self,
        rpc: &MethodInfo,
        body: Bytes,
        metadata: &MetadataMap,
    ) -> Result<tonic::Streaming<Bytes>, Status> {
        let backend = self.backend(rpc)?;
        if !backend.breaker.admit() {
            return Err(Status::unavailable(format!(
                "{} is unavailable (circuit open)",
                backend.workload
            )));
        }
        let path: http::uri::PathAndQuery = rpc
            .path
            .parse()
            .map_err(|_| Status::internal("bad method path"))?;
        let mut grpc = tonic::client::Grpc::new(backend.channel.clone());
        let mut req = tonic::Request::new(body);
        *req.metadata_mut() = metadata.clone();
        let open = async {
            grpc.ready().await.map_err(|e| {
                Status::unavailable(format!("{} is unavailable: {e}", backend.workload))
            })?;
            grpc.server_streaming(req, path, RawCodec)
                .await
                .map_err(|s| transport_failure_as_unavailable(s, backend.workload))
        };
        // The deadline bounds opening the stream (not how long it then runs).
        let result = tokio::time::timeout(self.deadline, open)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "{} did not open the stream within {} ms",
                    backend.workload,
                    self.deadline.as_millis()
                )))
            });
        backend.breaker.record(
            result
                .as_ref()
                .map_or_else(|s| !is_backend_failure(s), |_| true),
        );
        result.map(tonic::Response::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_half_opens_after_cool_down() {
        let b = Breaker::default();
        for _ in 0..TRIP_AFTER {
            assert!(b.admit());
            b.record(false);
        }
        assert!(b.is_open());
        assert!(!b.admit(), "fails fast while open");
        *b.state.lock().unwrap() = BreakerState::Open {
            until: Instant::now(),
            trips: 1,
        };
        assert!(b.admit(), "one trial after the cool-down");
        assert!(!b.admit(), "only one");
        b.record(true);
        assert!(b.admit() && !b.is_open(), "closed again");
    }

    #[test]
    fn a_dropped_trial_cannot_stick_the_circuit_and_failed_trials_back_off() {
        let metrics = Arc::new(GatewayMetrics::default());
        let b = Breaker::new("order-service", metrics.clone());
        for _ in 0..TRIP_AFTER {
            b.record(false);
        }
        let open = || {
            metrics
                .breaker_open
                .get_or_create(&GatewayMetrics::backend("order-service"))
                .get()
        };
        assert_eq!(open(), 1);
        // A trial goes out and its caller disconnects: it never reports back.
        *b.state.lock().unwrap() = BreakerState::Open {
            until: Instant::now(),
            trips: 1,
        };
        assert!(b.admit());
        assert!(!b.admit(), "while the trial may still answer");
        *b.state.lock().unwrap() = BreakerState::HalfOpen {
            since: Instant::now() - COOL_DOWN,
            trips: 1,
        };
        assert!(
            b.admit(),
            "after a cool-down the lost trial counts as failed"
        );
        // Failed trials lengthen the cool-down, up to the cap.
        b.record(false);
        let BreakerState::Open { until, trips } = *b.state.lock().unwrap() else {
            panic!("open after a failed trial");
        };
        assert_eq!(trips, 3);
        assert!(until > Instant::now() + COOL_DOWN * 2);
        assert_eq!(cool_down(2), COOL_DOWN * 2);
        assert_eq!(cool_down(30), MAX_COOL_DOWN);
        b.record(true);
        assert_eq!(open(), 0);
        let transitions = |state: &str| {
            metrics
                .breaker_transitions
                .get_or_create(&TransitionLabels {
                    backend: "order-service".into(),
                    state: state.into(),
                })
                .get()
        };
        assert_eq!((transitions("open"), transitions("closed")), (2, 1));
    }

    #[test]
    fn transport_failures_become_unavailable_or_deadline_exceeded() {
        // The client-side deadline firing: was CANCELLED, shown to clients as 499.
        let timed_out = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(timed_out.code(), tonic::Code::Cancelled);
        assert_eq!(
            transport_failure_as_unavailable(timed_out, "w").code(),
            tonic::Code::DeadlineExceeded
        );
        // A connection broken under the call: was UNKNOWN, shown as 500.
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            transport_failure_as_unavailable(broken, "w").code(),
            tonic::Code::Unavailable
        );
        // What a backend itself answered stays as it was.
        let answered = Status::internal("storage error");
        assert_eq!(
            transport_failure_as_unavailable(answered, "w").code(),
            tonic::Code::Internal
        );
        let cancelled = Status::cancelled("the client went away");
        assert_eq!(
            transport_failure_as_unavailable(cancelled, "w").code(),
            tonic::Code::Cancelled
        );
    }

    #[test]
    fn the_retry_budget_caps_retries_at_a_fifth_of_calls_plus_a_floor() {
        let budget = retry_budget();
        for _ in 0..1000 {
            budget.deposit();
        }
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
            assert!(granted <= 1000, "the budget never runs dry");
        }
        // 20% of 1,000 calls, plus at most the per-second floor over the window.
        let floor = RETRY_MIN_PER_SEC as usize * RETRY_WINDOW.as_secs() as usize;
        assert!(
            (200..=200 + floor).contains(&granted),
            "{granted} retries granted for 1,000 calls"
        );
        assert!(!budget.withdraw(), "spent until new calls deposit");
    }
}
