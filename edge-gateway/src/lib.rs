//! The edge gateway: REST/JSON in, typed gRPC over mTLS out. Routes, request and response
//! mapping come from the contracts' descriptors; hand-written code exists only for the
//! fan-out endpoint.

pub mod admin;
pub mod api_keys;
pub mod auth;
pub mod backends;
pub mod caller;
pub mod client_addr;
pub mod codec;
pub mod config;
pub mod endpoint;
pub mod gateway_metrics;
pub mod limits;
pub mod observe;
pub mod openapi;
pub mod overview;
pub mod pipeline;
pub mod problem;
pub mod proto_json;
pub mod rate_limit;
pub mod request_id;
pub mod revocations;
pub mod routes;
pub mod server;
pub mod transcode;
pub mod transcoded;
pub mod verified_tokens;

pub use config::GatewayConfig;
pub use server::Gateway;
