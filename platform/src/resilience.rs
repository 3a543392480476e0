//! The resilience every outbound call gets, as a tower layer under every mesh channel (so the
//! gateway, the saga, the outbox relay, the overview and the JWKS fetch share it):
//!
//! - a deadline: unary calls without one get the channel's default as `grpc-timeout`
//!   (enforced by the connection and told to the server); opening a stream is bounded by it;
//! - one retry of a call to an idempotent method (the contracts say which: a GET binding or
//!   `idempotency_level`) when the backend was unavailable, drawn from a per-backend retry
//!   budget so retries cannot multiply the load on a struggling backend;
//! - a circuit breaker per backend that fails fast while it is down and lets a trial call
//!   through after a cool-down. A trial that never reports back counts as failed after a
//!   cool-down, and failed trials back off (linkerd's consecutive-failures breaker).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, ServiceExt};

use crate::metrics::Metrics;

/// Consecutive failures that open a circuit.
pub const TRIP_AFTER: u32 = 5;
/// How long an open circuit first fails fast before letting one trial call through; each
/// failed trial doubles it, up to `MAX_COOL_DOWN`.
pub const COOL_DOWN: Duration = Duration::from_secs(5);
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(15);
/// Retries allowed per backend: 20% of the calls of the last 10 s, plus 5 a second so a
/// quiet client can still retry a blip.
const RETRY_WINDOW: Duration = Duration::from_secs(10);
const RETRY_MIN_PER_SEC: u32 = 5;
const RETRY_RATIO: f32 = 0.2;
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The deadline of a call that names none: a guard against a call hanging for ever, not a
/// latency target (the mesh's own callers each set theirs: the gateway, the saga, the relay).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub backend: String,
    /// `open`, `half_open` or `closed`.
    pub state: String,
}

/// Breakers and retries of a process's outbound calls, by backend.
#[derive(Debug, Default)]
pub struct ClientMetrics {
    pub breaker_open: Family<BackendLabels, Gauge>,
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    pub retries: Family<BackendLabels, Counter>,
    pub retry_budget_exhausted: Family<BackendLabels, Counter>,
}

impl ClientMetrics {
    pub(crate) fn register(&self, metrics: &Metrics) {
        metrics.with_registry(|r| {
            r.register(
                "client_circuit_breaker_open",
                "1 while a backend's circuit is open (calls fail fast), else 0",
                self.breaker_open.clone(),
            );
            r.register(
                "client_circuit_breaker_transitions",
                "Circuit breaker state changes, by backend and the state entered",
                self.breaker_transitions.clone(),
            );
            r.register(
                "client_retries",
                "Calls retried, by backend",
                self.retries.clone(),
            );
            r.register(
                "client_retry_budget_exhausted",
                "Retries refused because the backend's retry budget was spent",
                self.retry_budget_exhausted.clone(),
            );
        });
    }

    pub fn backend(backend: &str) -> BackendLabels {
        BackendLabels {
            backend: backend.to_string(),
        }
    }
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

fn cool_down(trips: u32) -> Duration {
    COOL_DOWN
        .saturating_mul(1u32 << trips.saturating_sub(1).min(8))
        .min(MAX_COOL_DOWN)
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    backend: String,
    metrics: Arc<ClientMetrics>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new("backend", Arc::default())
    }
}

impl Breaker {
    pub fn new(backend: &str, metrics: Arc<ClientMetrics>) -> Self {
        metrics
            .breaker_open
            .get_or_create(&ClientMetrics::backend(backend))
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
                .get_or_create(&ClientMetrics::backend(&self.backend))
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

fn retry_budget() -> TpsBudget {
    TpsBudget::new(RETRY_WINDOW, RETRY_MIN_PER_SEC, RETRY_RATIO)
}

/// The policy of one backend's channel; cloned layers share its breaker and budget.
#[derive(Clone)]
pub struct Resilience {
    backend: Arc<str>,
    breaker: Arc<Breaker>,
    retries: Arc<TpsBudget>,
    deadline: Duration,
    metrics: Arc<ClientMetrics>,
}

impl Resilience {
    pub fn new(backend: &str, deadline: Duration, metrics: Arc<ClientMetrics>) -> Self {
        Self {
            backend: backend.into(),
            breaker: Arc::new(Breaker::new(backend, metrics.clone())),
            retries: Arc::new(retry_budget()),
            deadline,
            metrics,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S> tower::Layer<S> for Resilience {
    type Service = Resilient<S>;
    fn layer(&self, inner: S) -> Resilient<S> {
        Resilient {
            inner,
            policy: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Resilient<S> {
    inner: S,
    policy: Resilience,
}

impl<S> Resilient<S> {
    pub fn policy(&self) -> &Resilience {
        &self.policy
    }
}

/// What one attempt's outcome says about the backend (not the request).
fn backend_failed(outcome: &Result<http::Response<Body>, BoxError>) -> bool {
    match outcome {
        Err(_) => true,
        Ok(res) => matches!(
            crate::rpc_layer::grpc_code(res),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
    }
}

/// UNAVAILABLE, or a connection that failed; not a deadline that passed (the backend may
/// still be working on it, and a second wait would double the caller's).
fn worth_retrying(outcome: &Result<http::Response<Body>, BoxError>) -> bool {
    match outcome {
        Err(e) => !e.is::<tonic::TimeoutExpired>(),
        Ok(res) => crate::rpc_layer::grpc_code(res) == tonic::Code::Unavailable,
    }
}

/// The deadline a request carries as `grpc-timeout` (`<digits><unit>`, unit one of
/// `H M S m u n`), if it carries a valid one.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A trailers-only UNAVAILABLE, as a server that refused the call would answer.
fn circuit_open(backend: &str) -> http::Response<Body> {
    let mut res = http::Response::new(Body::empty());
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    res.headers_mut().insert(
        "grpc-status",
        http::HeaderValue::from(tonic::Code::Unavailable as i32),
    );
    let message = format!("{backend}%20is%20unavailable%20(circuit%20open)");
    if let Ok(v) = http::HeaderValue::from_str(&message) {
        res.headers_mut().insert("grpc-message", v);
    }
    res
}

impl<S> tower::Service<http::Request<Body>> for Resilient<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt waits for the channel's readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        let method = ordermesh_contracts::descriptors::method_by_path(req.uri().path());
        let streaming = method.is_some_and(|m| m.server_streaming || m.client_streaming);
        let idempotent = method.is_some_and(|m| m.idempotent && !m.client_streaming);
        let deadline = match grpc_timeout(req.headers()) {
            Some(d) => d,
            None if streaming => policy.deadline,
            None => {
                let millis = policy.deadline.as_millis().min(99_999_999);
                if let Ok(v) = http::HeaderValue::from_str(&format!("{millis}m")) {
                    req.headers_mut().insert("grpc-timeout", v);
                }
                policy.deadline
            }
        };
        Box::pin(async move {
            policy.retries.deposit();
            let shared = policy.clone();
            let attempt = move |req: http::Request<Body>| {
                let inner = inner.clone();
                let policy = shared.clone();
                async move {
                    if !policy.breaker.admit() {
                        return Ok(circuit_open(&policy.backend));
                    }
                    // Holds the line while no connection can be made at all (a peer that
                    // accepts and never answers the handshake); for a stream it bounds
                    // opening it, not its life.
                    let outcome = match tokio::time::timeout(deadline, inner.oneshot(req)).await {
                        Ok(r) => r.map_err(Into::into),
                        Err(_) => Err(BoxError::from(tonic::TimeoutExpired(()))),
                    };
                    policy.breaker.record(!backend_failed(&outcome));
                    outcome
                }
            };
            if !idempotent {
                return attempt(req).await;
            }
            // The body is buffered (a unary message) so a second attempt can send it again.
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(Into::<BoxError>::into)?
                .to_bytes();
            let rebuild = || {
                let mut again =
                    http::Request::new(Body::new(http_body_util::Full::new(bytes.clone())));
                *again.method_mut() = parts.method.clone();
                *again.uri_mut() = parts.uri.clone();
                *again.version_mut() = parts.version;
                *again.headers_mut() = parts.headers.clone();
                again
            };
            let first = attempt(rebuild()).await;
            if !worth_retrying(&first) {
                return first;
            }
            let labels = ClientMetrics::backend(&policy.backend);
            if !policy.retries.withdraw() {
                policy
                    .metrics
                    .retry_budget_exhausted
                    .get_or_create(&labels)
                    .inc();
                return first;
            }
            policy.metrics.retries.get_or_create(&labels).inc();
            tokio::time::sleep(RETRY_PAUSE).await;
            attempt(rebuild()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::Service;

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
        let metrics = Arc::new(ClientMetrics::default());
        let b = Breaker::new("order-service", metrics.clone());
        for _ in 0..TRIP_AFTER {
            b.record(false);
        }
        let open = || {
            metrics
                .breaker_open
                .get_or_create(&ClientMetrics::backend("order-service"))
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

    /// What a scripted backend saw: each call's body and `grpc-timeout`.
    type Seen = Arc<Mutex<Vec<(bytes::Bytes, Option<String>)>>>;

    /// A backend answering every call with `code` (trailers-only), recording what it saw:
    /// the body and the `grpc-timeout` of each call.
    fn backend(
        code: tonic::Code,
    ) -> (
        impl tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
        Seen,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: http::Request<Body>| {
            let log = log.clone();
            async move {
                let timeout = req
                    .headers()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let body = req.into_body().collect().await?.to_bytes();
                log.lock().unwrap().push((body, timeout));
                let mut res = http::Response::new(Body::empty());
                res.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from(code as i32));
                Ok::<_, BoxError>(res)
            }
        });
        (svc, seen)
    }

    fn call_to(path: &str) -> http::Request<Body> {
        let mut req = http::Request::new(Body::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"message"),
        )));
        *req.uri_mut() = format!("http://backend{path}").parse().unwrap();
        req
    }

    const GET_PRODUCT: &str = "/ordermesh.order.v1.CatalogService/GetProduct";
    const CHARGE: &str = "/ordermesh.payment.v1.PaymentService/Charge";
    const SHIP: &str = "/ordermesh.order.v1.OrderService/ShipOrder";

    #[tokio::test]
    async fn idempotent_calls_are_retried_once_with_the_same_body_and_others_never() {
        let metrics = Arc::new(ClientMetrics::default());
        let policy = Resilience::new("payment-service", DEFAULT_DEADLINE, metrics.clone());
        let (svc, seen) = backend(tonic::Code::Unavailable);
        let mut client = tower::Layer::layer(&policy, svc);
        for path in [GET_PRODUCT, CHARGE] {
            seen.lock().unwrap().clear();
            let res = client.call(call_to(path)).await.unwrap();
            assert_eq!(crate::rpc_layer::grpc_code(&res), tonic::Code::Unavailable);
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2, "{path} is tried twice");
            assert!(seen.iter().all(|(body, _)| body == "message"));
        }
        seen.lock().unwrap().clear();
        client.call(call_to(SHIP)).await.unwrap();
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a non-idempotent call is sent once"
        );
        let retries = metrics
            .retries
            .get_or_create(&ClientMetrics::backend("payment-service"))
            .get();
        assert_eq!(retries, 2);
    }

    #[tokio::test]
    async fn an_answer_about_the_request_is_not_retried_and_keeps_the_circuit_closed() {
        let policy = Resilience::new("order-service", DEFAULT_DEADLINE, Arc::default());
        let (svc, seen) = backend(tonic::Code::NotFound);
        let mut client = tower::Layer::layer(&policy, svc);
        for _ in 0..TRIP_AFTER * 2 {
            client.call(call_to(GET_PRODUCT)).await.unwrap();
        }
        assert_eq!(seen.lock().unwrap().len(), (TRIP_AFTER * 2) as usize);
        assert!(!policy.breaker().is_open());
    }

    #[tokio::test]
    async fn an_open_circuit_answers_unavailable_without_calling_the_backend() {
        let policy = Resilience::new("order-service", DEFAULT_DEADLINE, Arc::default());
        let (svc, seen) = backend(tonic::Code::Unavailable);
        let mut client = tower::Layer::layer(&policy, svc);
        for _ in 0..TRIP_AFTER {
            client.call(call_to(SHIP)).await.unwrap();
        }
        assert!(policy.breaker().is_open());
        let res = client.call(call_to(SHIP)).await.unwrap();
        assert_eq!(crate::rpc_layer::grpc_code(&res), tonic::Code::Unavailable);
        assert!(
            res.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("circuit%20open")
        );
        assert_eq!(seen.lock().unwrap().len(), TRIP_AFTER as usize);
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_nonsense_is_ignored() {
        let read = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(read("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(read("2S"), Some(Duration::from_secs(2)));
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("7u"), Some(Duration::from_micros(7)));
        assert_eq!(read("m"), None);
        assert_eq!(read("12x"), None);
        assert_eq!(read("1234567890S"), None, "at most 8 digits");
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_backend_that_never_answers_is_cut_at_the_deadline_and_not_retried() {
        let policy = Resilience::new("order-service", Duration::from_millis(100), Arc::default());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let hole = tower::service_fn(move |_: http::Request<Body>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            futures::future::pending::<Result<http::Response<Body>, BoxError>>()
        });
        let mut client = tower::Layer::layer(&policy, hole);
        let err = client.call(call_to(GET_PRODUCT)).await.unwrap_err();
        assert!(err.is::<tonic::TimeoutExpired>(), "{err}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_unary_call_without_a_deadline_gets_the_default_and_one_with_keeps_its_own() {
        let policy = Resilience::new("order-service", Duration::from_millis(1500), Arc::default());
        let (svc, seen) = backend(tonic::Code::Ok);
        let mut client = tower::Layer::layer(&policy, svc);
        client.call(call_to(SHIP)).await.unwrap();
        let mut own = call_to(SHIP);
        own.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("200m"));
        client.call(own).await.unwrap();
        let timeouts: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(
            timeouts,
            vec![Some("1500m".to_string()), Some("200m".to_string())]
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
