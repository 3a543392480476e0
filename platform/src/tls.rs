//! rustls mTLS from a workload's PEM files, reloaded when the files change. Servers require a
//! client certificate from the mesh CA; clients present theirs and verify the server's.
//!
//! cert-manager (or any rotation) rewrites the mounted files in place. [`ReloadingCredentials`]
//! re-reads them every few seconds, and when they change and form a usable set (the key
//! matches the certificate, the bundle holds at least one CA) it publishes new credentials:
//! new handshakes use them, connections already open keep working. A bundle may hold several
//! CAs, so a CA rotation rolls through with the old and new CA trusted side by side.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TlsFiles;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for changes, unless `ORDERMESH_TLS_RELOAD_MS` says otherwise.
const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The PEM text of a workload's three files, as read.
#[derive(Clone, PartialEq, Eq)]
struct Pems {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Pems {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            ca: read(&files.ca)?,
            cert: read(&files.cert)?,
            key: read(&files.key)?,
        })
    }
}

/// A workload's loaded mesh credentials: for tonic clients, and a rustls server config.
#[derive(Debug, Clone)]
pub struct MeshCredentials {
    pub ca: Certificate,
    pub identity: Identity,
    server: Arc<rustls::ServerConfig>,
}

impl MeshCredentials {
    /// Reads and checks the files once.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::from_pems(files, &Pems::read(files)?)
    }

    fn from_pems(files: &TlsFiles, pems: &Pems) -> Result<Self, TlsError> {
        let invalid = |path: &Path, reason: String| TlsError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&pems.ca) {
            let ca = ca.map_err(|e| invalid(&files.ca, e.to_string()))?;
            roots
                .add(ca)
                .map_err(|e| invalid(&files.ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(invalid(&files.ca, "no CA certificate".into()));
        }
        let chain = CertificateDer::pem_slice_iter(&pems.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&files.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(invalid(&files.cert, "no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&pems.key)
            .map_err(|e| invalid(&files.key, e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| invalid(&files.ca, e.to_string()))?;
        // `with_single_cert` also checks that the key belongs to the certificate, so a
        // half-written rotation (new certificate, old key) is refused rather than served.
        let mut server = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&files.key, e.to_string()))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            ca: Certificate::from_pem(pems.ca.clone()),
            identity: Identity::from_pem(pems.cert.clone(), pems.key.clone()),
            server: Arc::new(server),
        })
    }

    /// Server side: our certificate, and client certificates from the mesh CA required.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// Client side: present our certificate, trust only the mesh CA, and expect the server to
    /// be `server_name` (a DNS SAN of its certificate).
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(server_name)
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// Credentials that follow their files: [`current`](Self::current) is always the latest
/// usable set, and [`changes`](Self::changes) tells when it was replaced.
#[derive(Clone)]
pub struct ReloadingCredentials {
    current: watch::Receiver<Arc<MeshCredentials>>,
}

fn reload_every() -> Duration {
    std::env::var("ORDERMESH_TLS_RELOAD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_RELOAD_EVERY, Duration::from_millis)
}

impl ReloadingCredentials {
    /// Loads the files (failing if they are unusable now) and, inside a Tokio runtime, keeps
    /// watching them until every copy of the returned value is dropped.
    pub fn watch(files: &TlsFiles) -> Result<Self, TlsError> {
        let pems = Pems::read(files)?;
        let creds = MeshCredentials::from_pems(files, &pems)?;
        let (tx, rx) = watch::channel(Arc::new(creds));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(follow(files.clone(), pems, tx, reload_every()));
        }
        Ok(Self { current: rx })
    }

    pub fn current(&self) -> Arc<MeshCredentials> {
        self.current.borrow().clone()
    }

    /// A receiver that wakes when new credentials are published.
    pub fn changes(&self) -> watch::Receiver<Arc<MeshCredentials>> {
        let mut rx = self.current.clone();
        rx.mark_unchanged();
        rx
    }
}

async fn follow(
    files: TlsFiles,
    mut last: Pems,
    tx: watch::Sender<Arc<MeshCredentials>>,
    every: Duration,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tx.closed() => return,
        }
        let pems = match Pems::read(&files) {
            Ok(p) if p == last => continue,
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "TLS files unreadable; keeping the credentials in use");
                continue;
            }
        };
        match MeshCredentials::from_pems(&files, &pems) {
            Ok(creds) => {
                tracing::info!(cert = %files.cert.display(), "TLS credentials changed on disk; new handshakes use them");
                last = pems;
                tx.send_replace(Arc::new(creds));
            }
            // Possibly caught halfway through a rotation: the next look will see it finished.
            Err(e) => {
                tracing::warn!(error = %e, "new TLS files are not usable yet; keeping the credentials in use")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertDir;
    use crate::identity::workloads;

    fn issued() -> (tempfile::TempDir, CertDir) {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path());
        certs
            .ensure(
                "cluster.local",
                "ordermesh",
                &[workloads::AUDIT, workloads::ORDER],
            )
            .unwrap();
        (dir, certs)
    }

    #[test]
    fn a_certificate_with_another_workload_s_key_is_refused() {
        let (_dir, certs) = issued();
        let audit = certs.files_for(workloads::AUDIT);
        let order = certs.files_for(workloads::ORDER);
        assert!(MeshCredentials::load(&audit).is_ok());
        let halfway = TlsFiles {
            key: order.key,
            ..audit
        };
        let err = MeshCredentials::load(&halfway).unwrap_err();
        assert!(matches!(err, TlsError::Invalid { .. }), "{err}");
    }

    #[test]
    fn an_empty_bundle_is_refused() {
        let (dir, certs) = issued();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = TlsFiles {
            ca: empty,
            ..certs.files_for(workloads::AUDIT)
        };
        assert!(MeshCredentials::load(&files).is_err());
    }

    #[tokio::test]
    async fn changed_files_are_published_and_bad_ones_are_not() {
        let (dir, certs) = issued();
        // Work on copies, so the test can rewrite them.
        let files = TlsFiles {
            ca: dir.path().join("w-ca.pem"),
            cert: dir.path().join("w-cert.pem"),
            key: dir.path().join("w-key.pem"),
        };
        let audit = certs.files_for(workloads::AUDIT);
        let order = certs.files_for(workloads::ORDER);
        std::fs::copy(&audit.ca, &files.ca).unwrap();
        std::fs::copy(&audit.cert, &files.cert).unwrap();
        std::fs::copy(&audit.key, &files.key).unwrap();
        let (tx, rx) = watch::channel(Arc::new(MeshCredentials::load(&files).unwrap()));
        let creds = ReloadingCredentials { current: rx };
        let first = Pems::read(&files).unwrap();
        tokio::spawn(follow(files.clone(), first, tx, Duration::from_millis(20)));
        let mut changes = creds.changes();

        // Half a rotation (a new certificate, the old key): not published.
        std::fs::copy(&order.cert, &files.cert).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !changes.has_changed().unwrap(),
            "a mismatched pair is not used"
        );

        // The rotation completes: published.
        std::fs::copy(&order.key, &files.key).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("published within 5 s")
            .unwrap();
    }
}
