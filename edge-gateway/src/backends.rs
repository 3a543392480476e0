//! The services behind the gateway: one mesh channel per workload. Each channel carries the
//! outbound resilience every mesh client has (balancing over every endpoint, deadline,
//! retries of idempotent methods under a budget, circuit breaker: see
//! `ordermesh_platform::resilience`); this adds the gateway's own deadline per call and maps
//! what a failed connection looks like to the status a client should see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ordermesh_contracts::descriptors::MethodInfo;
use ordermesh_platform::client::MeshChannel;
use ordermesh_platform::resilience::Breaker;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::codec::RawCodec;
use crate::gateway_metrics::GatewayMetrics;

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

pub struct Backend {
    pub workload: &'static str,
    pub channel: MeshChannel,
}

impl Backend {
    pub fn breaker(&self) -> &Breaker {
        self.channel.inner().policy().breaker()
    }
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
        self.by_package
            .insert(package.to_string(), Backend { workload, channel });
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

    /// A unary call with raw message bytes. The channel retries it once if the method is
    /// idempotent and the backend was unavailable.
    pub async fn unary(
        &self,
        rpc: &MethodInfo,
        body: Bytes,
        metadata: &MetadataMap,
    ) -> Result<Bytes, Status> {
        let backend = self.backend(rpc)?;
        let path = Self::path(rpc)?;
        let mut grpc = tonic::client::Grpc::new(backend.channel.clone());
        grpc.ready().await.map_err(|e| {
            Status::unavailable(format!("{} is unavailable: {e}", backend.workload))
        })?;
        grpc.unary(self.request(body, metadata), path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| transport_failure_as_unavailable(s, backend.workload))
    }

    /// A server-streaming call; the channel's deadline bounds opening it, not its life.
    pub async fn server_streaming(
        &self,
        rpc: &MethodInfo,
        body: Bytes,
        metadata: &MetadataMap,
    ) -> Result<tonic::Streaming<Bytes>, Status> {
        let backend = self.backend(rpc)?;
        let path = Self::path(rpc)?;
        let mut grpc = tonic::client::Grpc::new(backend.channel.clone());
        let mut req = tonic::Request::new(body);
        *req.metadata_mut() = metadata.clone();
        grpc.ready().await.map_err(|e| {
            Status::unavailable(format!("{} is unavailable: {e}", backend.workload))
        })?;
        grpc.server_streaming(req, path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| transport_failure_as_unavailable(s, backend.workload))
    }

    fn path(rpc: &MethodInfo) -> Result<http::uri::PathAndQuery, Status> {
        rpc.path
            .parse()
            .map_err(|_| Status::internal("bad method path"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
