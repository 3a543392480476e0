//! rustls mTLS for tonic servers and clients from a workload's PEM files. Servers require a
//! client certificate from the mesh CA; clients present theirs and verify the server's.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// A workload's loaded mesh credentials.
#[derive(Debug, Clone)]
pub struct MeshCredentials {
    pub ca: Certificate,
    pub identity: Identity,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl MeshCredentials {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            ca: Certificate::from_pem(read(&files.ca)?),
            identity: Identity::from_pem(read(&files.cert)?, read(&files.key)?),
        })
    }

    /// Server side: our certificate, and client certificates from the mesh CA required.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(Duration::from_secs(10))
    }

    /// Client side: present our certificate, trust only the mesh CA, and expect the server to
    /// be `server_name` (a DNS SAN of its certificate).
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(server_name)
            .timeout(Duration::from_secs(10))
    }
}
