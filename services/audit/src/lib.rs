//! audit-service: what happened in the mesh, append-only and tamper-evident.

pub mod chain;
pub mod grpc;
pub mod log;

pub use grpc::AuditServer;
pub use log::AuditLog;
