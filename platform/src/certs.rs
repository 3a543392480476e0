//! A mesh certificate authority for local runs and tests (rcgen): a CA and one certificate
//! per workload with its SPIFFE URI SAN, plus DNS names so standard clients (grpcurl) verify
//! servers with just the CA.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::config::TlsFiles;
use crate::identity::WorkloadId;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid SAN {0:?}")]
    BadSan(String),
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA able to sign workload certificates.
pub struct MeshCa {
    pub pem: PemPair,
    issuer: Issuer<'static, KeyPair>,
}

impl MeshCa {
    /// A new self-signed CA valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "ordermesh");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem)?)?;
        Ok(Self {
            pem: PemPair {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            },
            issuer,
        })
    }

    /// A certificate for `id`, usable as both server and client, valid in `[not_before,
    /// not_after]`, with `dns_names` (IP literals become IP SANs) beside the SPIFFE URI.
    pub fn issue(
        &self,
        id: &WorkloadId,
        dns_names: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<PemPair, CertError> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|_| CertError::BadSan(id.to_string()))?;
        params.subject_alt_names.push(SanType::URI(uri));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.service_account.as_str());
        dn.push(DnType::OrganizationName, "ordermesh");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `id` valid from an hour ago for `days`.
    pub fn issue_for_days(
        &self,
        id: &WorkloadId,
        dns_names: &[String],
        days: i64,
    ) -> Result<PemPair, CertError> {
        let now = OffsetDateTime::now_utc();
        self.issue(
            id,
            dns_names,
            now - Duration::hours(1),
            now + Duration::days(days),
        )
    }
}

/// The DNS names a local workload certificate carries: its service name, `localhost` and
/// the loopback address.
pub fn local_dns_names(service_account: &str) -> Vec<String> {
    vec![
        service_account.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ]
}

/// The on-disk layout of a dev certificate directory.
#[derive(Debug, Clone)]
pub struct CertDir {
    pub dir: PathBuf,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn files_for(&self, workload: &str) -> TlsFiles {
        TlsFiles {
            ca: self.ca_cert(),
            cert: self.dir.join(format!("{workload}.pem")),
            key: self.dir.join(format!("{workload}-key.pem")),
        }
    }

    /// Creates the CA (first run) and any missing workload certificate; existing files are
    /// kept, so a second run reuses the same identities. Returns the workloads issued now.
    pub fn ensure(
        &self,
        trust_domain: &str,
        namespace: &str,
        workloads: &[&str],
    ) -> Result<Vec<String>, CertError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CertError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let ca = if self.ca_cert().exists() && self.ca_key().exists() {
            let cert = fs::read_to_string(self.ca_cert()).map_err(io(&self.ca_cert()))?;
            let key = fs::read_to_string(self.ca_key()).map_err(io(&self.ca_key()))?;
            MeshCa::from_pem(&cert, &key)?
        } else {
            let ca = MeshCa::generate(&format!("ordermesh dev mesh CA ({trust_domain})"))?;
            write_private(&self.ca_key(), &ca.pem.key_pem)?;
            write_public(&self.ca_cert(), &ca.pem.cert_pem)?;
            ca
        };
        let mut issued = Vec::new();
        for workload in workloads {
            let files = self.files_for(workload);
            if files.cert.exists() && files.key.exists() {
                continue;
            }
            let id = WorkloadId::new(trust_domain, namespace, workload);
            let pair = ca.issue_for_days(&id, &local_dns_names(workload), 825)?;
            write_private(&files.key, &pair.key_pem)?;
            write_public(&files.cert, &pair.cert_pem)?;
            issued.push(workload.to_string());
        }
        Ok(issued)
    }
}

fn write_public(path: &Path, contents: &str) -> Result<(), CertError> {
    fs::write(path, contents).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a private key readable by the owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), CertError> {
    let err = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::workloads;

    #[test]
    fn issued_certificates_carry_the_spiffe_id_and_are_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path());
        let issued = dir
            .ensure("cluster.local", "ordermesh", workloads::ALL)
            .unwrap();
        assert_eq!(issued.len(), workloads::ALL.len());
        let files = dir.files_for(workloads::ORDER);
        let pem = fs::read_to_string(&files.cert).unwrap();
        let der = rustls_pemfile_der(&pem);
        let id = WorkloadId::from_certificate_der(&der).unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/ordermesh/sa/order-service"
        );
        let mode = fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Second run: nothing re-issued, same CA.
        let ca_before = fs::read_to_string(dir.ca_cert()).unwrap();
        assert!(
            dir.ensure("cluster.local", "ordermesh", workloads::ALL)
                .unwrap()
                .is_empty()
        );
        assert_eq!(fs::read_to_string(dir.ca_cert()).unwrap(), ca_before);
    }

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }
}
