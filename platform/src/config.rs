//! Configuration from environment variables, with defaults that run locally. Every value is
//! validated at start, and a bad one is reported by the name of its variable.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("environment variable {var} must be set: {reason}")]
    Missing { var: String, reason: String },
}

/// Reads `var`, parsing it with `FromStr`; `None` when unset or empty.
pub fn env_opt<T>(var: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(var) {
        Ok(raw) if !raw.trim().is_empty() => {
            raw.trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| ConfigError::Invalid {
                    var: var.to_string(),
                    value: raw,
                    reason: e.to_string(),
                })
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => Err(ConfigError::Invalid {
            var: var.to_string(),
            value: raw.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".into(),
        }),
    }
}

/// Reads `var`, or returns `default` when unset.
pub fn env_or<T>(var: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    Ok(env_opt(var)?.unwrap_or(default))
}

/// Who terminates mutual TLS between workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// The process itself serves and dials rustls mTLS with mesh certificates.
    Builtin,
    /// An Istio sidecar terminates mTLS; the process listens in plaintext on the pod and reads
    /// the verified peer from the sidecar's `x-forwarded-client-cert` header.
    Istio,
}

impl FromStr for MtlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "builtin" => Ok(Self::Builtin),
            "istio" => Ok(Self::Istio),
            other => Err(format!("expected `builtin` or `istio`, got `{other}`")),
        }
    }
}

/// PEM files of a workload's mesh identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How this workload takes part in the mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub trust_domain: String,
    pub namespace: String,
    pub mtls_mode: MtlsMode,
    /// Required in builtin mode.
    pub tls: Option<TlsFiles>,
}

impl MeshConfig {
    pub const DEFAULT_TRUST_DOMAIN: &'static str = "cluster.local";
    pub const DEFAULT_NAMESPACE: &'static str = "ordermesh";

    /// Reads `ORDERMESH_TRUST_DOMAIN`, `ORDERMESH_NAMESPACE`, `ORDERMESH_MTLS_MODE` and, in
    /// builtin mode, `ORDERMESH_TLS_CA`, `ORDERMESH_TLS_CERT`, `ORDERMESH_TLS_KEY`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let trust_domain: String = env_or(
            "ORDERMESH_TRUST_DOMAIN",
            Self::DEFAULT_TRUST_DOMAIN.to_string(),
        )?;
        let namespace: String = env_or("ORDERMESH_NAMESPACE", Self::DEFAULT_NAMESPACE.to_string())?;
        for (var, value) in [
            ("ORDERMESH_TRUST_DOMAIN", &trust_domain),
            ("ORDERMESH_NAMESPACE", &namespace),
        ] {
            crate::identity::validate_segment(value).map_err(|reason| ConfigError::Invalid {
                var: var.into(),
                value: value.clone(),
                reason,
            })?;
        }
        let mtls_mode = env_or("ORDERMESH_MTLS_MODE", MtlsMode::Builtin)?;
        let tls = match mtls_mode {
            MtlsMode::Istio => None,
            MtlsMode::Builtin => {
                let need = |var: &str| -> Result<PathBuf, ConfigError> {
                    env_opt::<PathBuf>(var)?.ok_or_else(|| ConfigError::Missing {
                        var: var.into(),
                        reason: "builtin mTLS needs the workload's PEM files \
                                 (run `ordermesh certs` to issue dev certificates)"
                            .into(),
                    })
                };
                Some(TlsFiles {
                    ca: need("ORDERMESH_TLS_CA")?,
                    cert: need("ORDERMESH_TLS_CERT")?,
                    key: need("ORDERMESH_TLS_KEY")?,
                })
            }
        };
        Ok(Self {
            trust_domain,
            namespace,
            mtls_mode,
            tls,
        })
    }
}

/// Where a gRPC workload listens.
#[derive(Debug, Clone, Copy)]
pub struct ListenConfig {
    /// The gRPC port (mTLS in builtin mode).
    pub grpc: SocketAddr,
    /// A plaintext gRPC port serving only `grpc.health.v1`, for kubelet's native probes.
    pub health: Option<SocketAddr>,
    /// Prometheus `/metrics` over plain HTTP.
    pub metrics: Option<SocketAddr>,
}

impl ListenConfig {
    /// Reads `ORDERMESH_GRPC_ADDR`, `ORDERMESH_HEALTH_ADDR`, `ORDERMESH_METRICS_ADDR`.
    pub fn from_env(default_grpc: SocketAddr) -> Result<Self, ConfigError> {
        Ok(Self {
            grpc: env_or("ORDERMESH_GRPC_ADDR", default_grpc)?,
            health: env_opt("ORDERMESH_HEALTH_ADDR")?,
            metrics: env_opt("ORDERMESH_METRICS_ADDR")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_names_its_variable() {
        // Use a variable name no other test touches; tests run in threads of one process.
        unsafe { std::env::set_var("ORDERMESH_TEST_PORT_X", "not-a-port") };
        let err = env_opt::<u16>("ORDERMESH_TEST_PORT_X").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ORDERMESH_TEST_PORT_X"), "{msg}");
        assert!(msg.contains("not-a-port"), "{msg}");
        unsafe { std::env::remove_var("ORDERMESH_TEST_PORT_X") };
    }

    #[test]
    fn unset_or_blank_means_default() {
        assert_eq!(env_or("ORDERMESH_TEST_UNSET_Y", 7u16).unwrap(), 7);
        unsafe { std::env::set_var("ORDERMESH_TEST_BLANK_Z", "  ") };
        assert_eq!(env_or("ORDERMESH_TEST_BLANK_Z", 9u16).unwrap(), 9);
    }

    #[test]
    fn mtls_mode_parses_only_known_values() {
        assert_eq!("istio".parse::<MtlsMode>().unwrap(), MtlsMode::Istio);
        assert!(
            "mutual"
                .parse::<MtlsMode>()
                .unwrap_err()
                .contains("builtin")
        );
    }
}
