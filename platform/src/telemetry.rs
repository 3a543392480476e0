//! Logs and traces. JSON logs carry the trace and span ids of the span they happen in;
//! OpenTelemetry traces go over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
//! exporter honours the standard `OTEL_EXPORTER_OTLP_*` variables, the resource
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`). W3C trace context is the propagator.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts the tracer provider down when dropped (end of `main`).
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    /// Flushes the log writer's queue when dropped.
    _logs: tracing_appender::non_blocking::WorkerGuard,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            eprintln!("trace flush failed: {e}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber, propagator and tracer provider. Must run inside a Tokio
/// runtime (the OTLP exporter needs one).
/// Log lines waiting for the writer thread, at most.
const LOG_QUEUE_LINES: usize = 8192;

pub fn init(service_name: &str, format: LogFormat) -> Result<TelemetryGuard, TelemetryError> {
    init_roles(service_name, &[], format)
}

fn otlp_exporter() -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// Like [`init`], for one process running several `roles` (`ordermesh up`): each role's spans
/// are exported under its own `service.name` (see [`crate::role_spans`]).
pub fn init_roles(
    service_name: &str,
    roles: &[&str],
    format: LogFormat,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_string());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let otlp_enabled = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .is_ok_and(|v| !v.trim().is_empty())
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v != "none");
    if otlp_enabled && roles.is_empty() {
        builder = builder.with_batch_exporter(otlp_exporter()?);
    } else if otlp_enabled {
        let batch = |e| opentelemetry_sdk::trace::BatchSpanProcessor::builder(e).build();
        let mut by_role = std::collections::HashMap::new();
        for role in roles {
            by_role.insert(role.to_string(), batch(otlp_exporter()?));
        }
        builder = builder.with_span_processor(crate::role_spans::RoleRouting::new(
            by_role,
            batch(otlp_exporter()?),
        ));
    }
    // Without an exporter the provider still mints real trace ids, so logs and
    // propagation work the same with and without a collector.
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("ordermesh");

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,aws_smithy_runtime=warn,aws_config=warn")
    });
    // Log lines (an access line per request among them) are written by a thread of their own,
    // so a slow stdout never holds a request; when its queue is full, lines are dropped
    // rather than requests delayed. The queue is allocated whole up front: tracing-appender's
    // default of 128,000 lines is 4 MiB of every process's RSS; 8,192 lines is seconds of
    // access lines at full load. The writer thread takes what has queued up and writes it
    // with one call (it flushes after each batch), not a write per line.
    let (writer, logs) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            // Every span of the line's context, so a line written deep in a call still
            // carries the request id and trace id of the request it serves.
            .with_current_span(true)
            .with_span_list(true)
            .with_target(true)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        // Spans carry what OpenTelemetry's conventions name, not tracing's bookkeeping
        // (busy/idle time, thread and source location).
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_location(false),
        )
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if otlp_enabled {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(TelemetryGuard {
        provider,
        _logs: logs,
    })
}

/// Reads W3C trace context from HTTP/gRPC headers. Binary (`-bin`) metadata is skipped.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(http::HeaderName::as_str)
            .filter(|k| !k.ends_with("-bin"))
            .collect()
    }
}

/// Writes W3C trace context into HTTP/gRPC headers.
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent carried by `headers`, if any.
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the context of `span` into `headers`.
pub fn inject_span(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// The W3C `traceparent` of the current span (empty when there is none), to store with work
/// that another task or replica finishes later.
pub fn current_traceparent() -> String {
    let mut carrier = http::HeaderMap::new();
    inject_span(&tracing::Span::current(), &mut carrier);
    carrier
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The span context a stored `traceparent` names, if it is valid.
pub fn span_context_of(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt;
    let mut carrier = http::HeaderMap::new();
    carrier.insert("traceparent", traceparent.parse().ok()?);
    let cx = extract_context(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to the trace a stored `traceparent` names (nothing when it names none).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(origin) = span_context_of(traceparent) {
        span.add_link(origin);
    }
}

/// The trace id of `span` as 32 hex digits (all zeros when tracing is off).
pub fn trace_id_of(span: &tracing::Span) -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.context().span().span_context().trace_id().to_string()
}
