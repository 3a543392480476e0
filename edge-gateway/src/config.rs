//! Gateway settings from `ORDERMESH_*` variables.

use std::net::SocketAddr;
use std::time::Duration;

use ordermesh_platform::config::{ConfigError, env_opt, env_or};

use ordermesh_platform::admission::AdmissionLimits;
use ordermesh_platform::http_server::HttpSettings;

use crate::client_addr::TrustedProxies;
use crate::limits::Limit;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub http_addr: SocketAddr,
    /// Where the admin endpoints (metrics, backend health) listen, if anywhere.
    pub admin_addr: Option<SocketAddr>,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
    /// Connection hygiene of the public listener (head deadline, connection caps; trusted
    /// proxies are exempt from the per-address cap).
    pub http: HttpSettings,
    /// Deadline of each backend call.
    pub deadline: Duration,
    /// The longest a request may take to its response's head (a stream then runs on).
    pub request_timeout: Duration,
    /// Requests handled at once; past it the gateway sheds load with 503.
    pub max_in_flight: usize,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Origins allowed by CORS (empty: none).
    pub cors_origins: Vec<String>,
    pub rate_default: Limit,
    pub rate_account: Limit,
    /// Every request, per client address, before authentication.
    pub rate_address: Limit,
    /// Requests with an API key, per key.
    pub rate_api_key: Limit,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// How often revocations are fetched from user-service: the longest a revoked access
    /// token can still get through (plus one call's time).
    pub revocation_poll: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_addr: None,
            trusted_proxies: TrustedProxies::default(),
            http: HttpSettings::default(),
            deadline: Duration::from_secs(5),
            // Two attempts of a retried call, with room to answer.
            request_timeout: Duration::from_secs(11),
            max_in_flight: 4096,
            body_limit: 1024 * 1024,
            cors_origins: Vec::new(),
            rate_default: Limit {
                per_minute: 600,
                burst: 100,
            },
            rate_account: Limit {
                per_minute: 30,
                burst: 10,
            },
            rate_address: Limit {
                per_minute: 1200,
                burst: 200,
            },
            rate_api_key: Limit {
                per_minute: 300,
                burst: 50,
            },
            jwt_issuer: ordermesh_platform::jwt::DEFAULT_ISSUER.into(),
            jwt_audience: ordermesh_platform::jwt::DEFAULT_AUDIENCE.into(),
            revocation_poll: Duration::from_secs(1),
        }
    }
}

impl GatewayConfig {
    /// `ORDERMESH_HTTP_ADDR`, `ORDERMESH_GATEWAY_DEADLINE_MS`, `ORDERMESH_BODY_LIMIT_BYTES`,
    /// `ORDERMESH_CORS_ORIGINS` (comma-separated), `ORDERMESH_RATE_LIMIT_PER_MINUTE`,
    /// `ORDERMESH_RATE_LIMIT_BURST`, `ORDERMESH_ACCOUNT_RATE_LIMIT_PER_MINUTE`,
    /// `ORDERMESH_ACCOUNT_RATE_LIMIT_BURST`, `ORDERMESH_JWT_ISSUER`, `ORDERMESH_JWT_AUDIENCE`,
    /// `ORDERMESH_ADMIN_ADDR`, `ORDERMESH_TRUSTED_PROXIES` (comma-separated addresses or
    /// CIDRs), `ORDERMESH_TRUSTED_HOPS`, `ORDERMESH_HTTP_HEADER_TIMEOUT_MS`,
    /// `ORDERMESH_MAX_CONNECTIONS`, `ORDERMESH_MAX_CONNECTIONS_PER_ADDRESS`,
    /// `ORDERMESH_ADDRESS_RATE_LIMIT_PER_MINUTE`, `ORDERMESH_ADDRESS_RATE_LIMIT_BURST`,
    /// `ORDERMESH_REVOCATION_POLL_MS`, `ORDERMESH_GATEWAY_REQUEST_TIMEOUT_MS`,
    /// `ORDERMESH_GATEWAY_MAX_IN_FLIGHT`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let origins: String = env_or("ORDERMESH_CORS_ORIGINS", String::new())?;
        let proxies: String = env_or("ORDERMESH_TRUSTED_PROXIES", String::new())?;
        let cidrs = TrustedProxies::parse_cidrs(&proxies).map_err(|e| ConfigError::Invalid {
            var: "ORDERMESH_TRUSTED_PROXIES".into(),
            value: proxies.clone(),
            reason: e.to_string(),
        })?;
        let deadline = Duration::from_millis(env_or("ORDERMESH_GATEWAY_DEADLINE_MS", 5000u64)?);
        Ok(Self {
            http_addr: env_or("ORDERMESH_HTTP_ADDR", d.http_addr)?,
            admin_addr: env_opt("ORDERMESH_ADMIN_ADDR")?,
            http: HttpSettings::new(
                Duration::from_millis(env_or(
                    "ORDERMESH_HTTP_HEADER_TIMEOUT_MS",
                    d.http.header_timeout.as_millis() as u64,
                )?),
                AdmissionLimits {
                    max_connections: env_or(
                        "ORDERMESH_MAX_CONNECTIONS",
                        AdmissionLimits::for_this_process().max_connections,
                    )?,
                    max_per_address: env_or(
                        "ORDERMESH_MAX_CONNECTIONS_PER_ADDRESS",
                        AdmissionLimits::for_this_process().max_per_address,
                    )?,
                    exempt: cidrs.clone(),
                },
            ),
            trusted_proxies: TrustedProxies {
                cidrs,
                hops: env_or("ORDERMESH_TRUSTED_HOPS", 0usize)?,
            },
            deadline,
            request_timeout: Duration::from_millis(env_or(
                "ORDERMESH_GATEWAY_REQUEST_TIMEOUT_MS",
                (deadline * 2).as_millis() as u64 + 1000,
            )?),
            max_in_flight: env_or("ORDERMESH_GATEWAY_MAX_IN_FLIGHT", d.max_in_flight)?,
            body_limit: env_or("ORDERMESH_BODY_LIMIT_BYTES", d.body_limit)?,
            cors_origins: origins
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            rate_default: Limit {
                per_minute: env_or("ORDERMESH_RATE_LIMIT_PER_MINUTE", d.rate_default.per_minute)?,
                burst: env_or("ORDERMESH_RATE_LIMIT_BURST", d.rate_default.burst)?,
            },
            rate_account: Limit {
                per_minute: env_or(
                    "ORDERMESH_ACCOUNT_RATE_LIMIT_PER_MINUTE",
                    d.rate_account.per_minute,
                )?,
                burst: env_or("ORDERMESH_ACCOUNT_RATE_LIMIT_BURST", d.rate_account.burst)?,
            },
            rate_address: Limit {
                per_minute: env_or(
                    "ORDERMESH_ADDRESS_RATE_LIMIT_PER_MINUTE",
                    d.rate_address.per_minute,
                )?,
                burst: env_or("ORDERMESH_ADDRESS_RATE_LIMIT_BURST", d.rate_address.burst)?,
            },
            rate_api_key: Limit {
                per_minute: env_or(
                    "ORDERMESH_API_KEY_RATE_LIMIT_PER_MINUTE",
                    d.rate_api_key.per_minute,
                )?,
                burst: env_or("ORDERMESH_API_KEY_RATE_LIMIT_BURST", d.rate_api_key.burst)?,
            },
            jwt_issuer: env_or("ORDERMESH_JWT_ISSUER", d.jwt_issuer)?,
            jwt_audience: env_or("ORDERMESH_JWT_AUDIENCE", d.jwt_audience)?,
            revocation_poll: Duration::from_millis(env_or(
                "ORDERMESH_REVOCATION_POLL_MS",
                d.revocation_poll.as_millis() as u64,
            )?),
        })
    }
}
