//! Channels to other mesh workloads: mTLS with this workload's certificate (or plaintext to
//! the local sidecar in Istio mode), lazy connections so workloads may start in any order,
//! balancing over every replica, and client spans and metrics on every call.
//!
//! A channel is balanced over the addresses its endpoints resolve to. A DNS name (a headless
//! Service in Kubernetes) is looked up again every few seconds: replicas that appear are added,
//! replicas that go are removed (their connections close once their calls finish), and a
//! failed lookup keeps the last known set. When the workload's certificate rotates, every
//! address is re-added with the new credentials, so new connections present the new
//! certificate while calls on the old connections finish.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::config::{MeshConfig, MtlsMode};
use crate::metrics::Metrics;
use crate::resilience::{DEFAULT_DEADLINE, Resilience, Resilient};
use crate::rpc_layer::{RpcLayer, RpcService};
use crate::tls::{MeshCredentials, ReloadingCredentials, TlsError};

/// A balanced channel with the outbound resilience (deadline, retries, breaker) and client
/// tracing and metrics; what every generated client is built on.
pub type MeshChannel = RpcService<Resilient<Channel>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoint given for {0}")]
    NoEndpoint(String),
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("builtin mTLS mode needs certificate files")]
    MissingTls,
    #[error("channels are built inside a Tokio runtime")]
    NoRuntime,
}

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often DNS names are looked up again, unless `ORDERMESH_DNS_REFRESH_SECS` says otherwise.
const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// Pending changes between the discovery task and the balancer.
const CHANGES_CAPACITY: usize = 1024;

/// Where a workload is: `scheme://host:port`, the host an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(raw: &str) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadEndpoint {
            endpoint: raw.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = raw.parse().map_err(|_| bad("not a URI"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }

    fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// Turns targets into addresses. DNS in production; tests may supply their own.
pub trait Resolver: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo`, which reads `/etc/hosts` and the cluster DNS).
pub struct SystemDns;

impl Resolver for SystemDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

fn refresh_every() -> Duration {
    std::env::var("ORDERMESH_DNS_REFRESH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_REFRESH, Duration::from_secs_f64)
}

/// Builds channels for one workload.
#[derive(Clone)]
pub struct ChannelFactory {
    credentials: Option<ReloadingCredentials>,
    metrics: Arc<Metrics>,
    resolver: Arc<dyn Resolver>,
    refresh: Duration,
}

impl ChannelFactory {
    pub fn new(mesh: &MeshConfig, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let credentials = match mesh.mtls_mode {
            MtlsMode::Builtin => Some(ReloadingCredentials::watch(
                mesh.tls.as_ref().ok_or(ClientError::MissingTls)?,
            )?),
            MtlsMode::Istio => None,
        };
        Ok(Self {
            credentials,
            metrics,
            resolver: Arc::new(SystemDns),
            refresh: refresh_every(),
        })
    }

    /// The same factory resolving names with `resolver` every `refresh`.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>, refresh: Duration) -> Self {
        self.resolver = resolver;
        self.refresh = refresh;
        self
    }

    /// A channel to `workload` (its service-account name, which its certificate carries as a
    /// DNS name) at one or more `endpoints` (`https://host:port`, comma-separated allowed).
    pub fn channel(&self, workload: &str, endpoints: &str) -> Result<MeshChannel, ClientError> {
        let targets = endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(ClientError::NoEndpoint(workload.to_string()));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let (channel, changes) = Channel::balance_channel::<SocketAddr>(CHANGES_CAPACITY);
        let discovery_target = targets[0].clone();
        let discovery = Discovery {
            workload: workload.to_string(),
            targets,
            credentials: self.credentials.clone(),
            resolver: self.resolver.clone(),
            refresh: self.refresh,
            changes,
        };
        // Addresses given as IPs go in at once, so the first call need not wait for the task.
        let mut known = BTreeMap::new();
        let creds = discovery
            .credentials
            .as_ref()
            .map(ReloadingCredentials::current);
        for (addr, tls) in discovery.literals() {
            let endpoint = discovery.endpoint(addr, tls, creds.as_deref())?;
            if discovery
                .changes
                .try_send(Change::Insert(addr, endpoint))
                .is_ok()
            {
                known.insert(addr, tls);
            }
        }
        runtime.spawn(discovery.run(known));
        let first = &discovery_target;
        let resilient = tower::Layer::layer(
            &Resilience::new(workload, DEFAULT_DEADLINE, self.metrics.client()),
            channel,
        );
        Ok(tower::Layer::layer(
            &RpcLayer::client(self.metrics.clone(), &first.host, first.port),
            resilient,
        ))
    }
}

/// Keeps one balanced channel's endpoints in step with DNS and the credentials.
struct Discovery {
    workload: String,
    targets: Vec<Target>,
    credentials: Option<ReloadingCredentials>,
    resolver: Arc<dyn Resolver>,
    refresh: Duration,
    changes: Sender<Change<SocketAddr, Endpoint>>,
}

impl Discovery {
    fn literals(&self) -> Vec<(SocketAddr, bool)> {
        self.targets
            .iter()
            .filter_map(|t| t.literal().map(|a| (a, t.tls)))
            .collect()
    }

    fn endpoint(
        &self,
        addr: SocketAddr,
        tls: bool,
        creds: Option<&MeshCredentials>,
    ) -> Result<Endpoint, ClientError> {
        let scheme = if tls { "https" } else { "http" };
        let uri = format!("{scheme}://{addr}");
        let bad = |e: tonic::transport::Error| ClientError::BadEndpoint {
            endpoint: uri.clone(),
            reason: e.to_string(),
        };
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(bad)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if tls && let Some(creds) = creds {
            ep = ep
                .tls_config(creds.client_config(&self.workload))
                .map_err(bad)?;
        }
        Ok(ep)
    }

    /// Every address the targets stand for now; a name whose lookup fails keeps the
    /// addresses it had.
    async fn resolve(
        &self,
        previous: &BTreeMap<SocketAddr, (bool, usize)>,
    ) -> BTreeMap<SocketAddr, (bool, usize)> {
        let mut now = BTreeMap::new();
        for (i, target) in self.targets.iter().enumerate() {
            if let Some(addr) = target.literal() {
                now.insert(addr, (target.tls, i));
                continue;
            }
            match self.resolver.resolve(&target.host, target.port).await {
                Ok(addrs) => {
                    for a in addrs {
                        now.insert(a, (target.tls, i));
                    }
                }
                Err(error) => {
                    tracing::warn!(workload = %self.workload, host = %target.host, %error, "lookup failed; keeping the known replicas");
                    for (a, v) in previous.iter().filter(|(_, (_, t))| *t == i) {
                        now.insert(*a, *v);
                    }
                }
            }
        }
        now
    }

    async fn run(self, literal: BTreeMap<SocketAddr, bool>) {
        let mut changes = self.credentials.as_ref().map(ReloadingCredentials::changes);
        let mut known: BTreeMap<SocketAddr, (bool, usize)> = literal
            .into_iter()
            .map(|(a, tls)| (a, (tls, usize::MAX)))
            .collect();
        let mut creds = self.credentials.as_ref().map(ReloadingCredentials::current);
        let mut rotated = false;
        loop {
            let wanted = self.resolve(&known).await;
            let mut sends = Vec::new();
            for (addr, (tls, _)) in &wanted {
                if rotated || !known.contains_key(addr) {
                    match self.endpoint(*addr, *tls, creds.as_deref()) {
                        Ok(ep) => sends.push(Change::Insert(*addr, ep)),
                        Err(error) => tracing::warn!(%error, "skipping an endpoint"),
                    }
                }
            }
            let gone: BTreeSet<SocketAddr> = known
                .keys()
                .filter(|a| !wanted.contains_key(a))
                .copied()
                .collect();
            for addr in &gone {
                tracing::info!(workload = %self.workload, %addr, "replica gone; draining its connection");
                sends.push(Change::Remove(*addr));
            }
            for change in sends {
                if let Change::Insert(addr, _) = &change
                    && !known.contains_key(addr)
                {
                    tracing::info!(workload = %self.workload, %addr, "replica found");
                }
                if self.changes.send(change).await.is_err() {
                    return; // the channel is gone
                }
            }
            known = wanted;
            rotated = false;
            let wait = tokio::time::sleep(self.refresh);
            tokio::select! {
                _ = wait => {}
                changed = async {
                    match changes.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if changed {
                        creds = self.credentials.as_ref().map(ReloadingCredentials::current);
                        rotated = true;
                        tracing::info!(workload = %self.workload, "credentials rotated; reconnecting with them");
                    } else {
                        changes = None;
                    }
                }
                _ = self.changes.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_names_addresses_and_default_ports() {
        let t = Target::parse("https://order-service-headless.ordermesh.svc:50051").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "order-service-headless.ordermesh.svc".into(),
                port: 50051
            }
        );
        assert!(t.literal().is_none());
        let ip = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!(ip.literal(), Some("[::1]:8080".parse().unwrap()));
        assert_eq!(Target::parse("https://a.b").unwrap().port, 443);
        assert!(Target::parse("ftp://a:1").is_err());
        assert!(Target::parse("not a uri").is_err());
    }
}
