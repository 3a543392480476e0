//! The runtime every ordermesh binary shares: configuration, mesh identity and mTLS,
//! per-method authorization, telemetry (logs, traces, metrics) and the gRPC server and
//! client builders. Services and the gateway build on this; it knows only the contracts.

pub mod admission;
pub mod authz;
pub mod certs;
pub mod client;
pub mod clock;
pub mod config;
pub mod constraints;
pub mod fd_limit;
pub mod follow;
pub mod http_error_heads;
pub mod http_server;
pub mod identity;
pub mod istio_policy;
pub mod jwt;
pub mod lease;
pub mod metrics;
pub mod money;
pub mod net;
pub mod outbox;
pub mod process_metrics;
pub mod resilience;
pub mod role_spans;
pub mod rpc_layer;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod user_context;
pub mod xfcc;
