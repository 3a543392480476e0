//! Workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, the form
//! Istio uses, read from a peer certificate's URI SAN or from a sidecar's forwarded header.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The service-account names of ordermesh's workloads, as the proto access options name them.
pub mod workloads {
    pub const USER: &str = "user-service";
    pub const ORDER: &str = "order-service";
    pub const PAYMENT: &str = "payment-service";
    pub const AUDIT: &str = "audit-service";
    pub const NOTIFICATION: &str = "notification-service";
    pub const GATEWAY: &str = "edge-gateway";
    /// The identity of a person debugging the mesh with grpcurl: health, reflection and read
    /// methods only.
    pub const OPERATOR: &str = "operator";
    /// An operator allowed the admin writes (roles, catalog, fulfilment) from inside the mesh.
    /// Named in the proto options but never issued by default: `ordermesh certs --with
    /// operator-admin` issues it on purpose.
    pub const OPERATOR_ADMIN: &str = "operator-admin";
    /// Every identity issued by default.
    pub const ALL: &[&str] = &[USER, ORDER, PAYMENT, AUDIT, NOTIFICATION, GATEWAY, OPERATOR];
    /// The workloads that serve: one per role `ordermesh up` runs.
    pub const ROLES: &[&str] = &[GATEWAY, USER, ORDER, PAYMENT, AUDIT, NOTIFICATION];
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("not a SPIFFE workload id of the form spiffe://<trust-domain>/ns/<ns>/sa/<sa>: {0}")]
    Malformed(String),
    #[error("peer certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("peer certificate carries no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("forwarded client certificate header carries no URI")]
    NoForwardedUri,
    #[error("forwarded client certificate header carries several URIs in its last element")]
    SeveralForwardedUris,
    #[error("forwarded client certificate header is malformed: {0}")]
    BadForwardedHeader(#[from] crate::xfcc::XfccError),
}

/// A mesh workload's SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Checks one path segment or trust domain: non-empty, DNS-label-ish characters only.
pub fn validate_segment(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "character {c:?} is not allowed (use a-z, 0-9, '-', '.', '_')"
        ));
    }
    Ok(())
}

impl WorkloadId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        for seg in [td, ns, sa] {
            validate_segment(seg).map_err(|_| malformed())?;
        }
        Ok(Self::new(td, ns, sa))
    }

    /// The identity in a DER certificate's URI SANs.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?
            .ok_or(IdentityError::NoSpiffeId)?;
        san.value
            .general_names
            .iter()
            .find_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(Self::parse(uri)),
                _ => None,
            })
            .unwrap_or(Err(IdentityError::NoSpiffeId))
    }

    /// The identity of the client that a sidecar verified, from an Envoy
    /// `x-forwarded-client-cert` value. With several elements (`,`-separated, one per proxy
    /// hop) the last one is the peer the local sidecar saw.
    pub fn from_forwarded_client_cert(header: &str) -> Result<Self, IdentityError> {
        let nearest = crate::xfcc::nearest(header)?;
        let mut uris = nearest.values("uri");
        let uri = uris.next().ok_or(IdentityError::NoForwardedUri)?;
        if uris.next().is_some() {
            return Err(IdentityError::SeveralForwardedUris);
        }
        Self::parse(uri)
    }

    /// The principal form Istio's AuthorizationPolicy uses: `<td>/ns/<ns>/sa/<sa>`.
    pub fn istio_principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_spiffe_ids() {
        let id = WorkloadId::parse("spiffe://cluster.local/ns/shop/sa/order-service").unwrap();
        assert_eq!(id.service_account, "order-service");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/order-service"
        );
        assert_eq!(
            id.istio_principal(),
            "cluster.local/ns/shop/sa/order-service"
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
        ] {
            assert!(WorkloadId::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn reads_the_last_hop_of_a_forwarded_client_cert_header() {
        let xfcc = "By=spiffe://cluster.local/ns/x/sa/gw;URI=spiffe://cluster.local/ns/x/sa/evil,\
                    By=spiffe://cluster.local/ns/x/sa/order-service;Hash=ab12;Subject=\"\";\
                    URI=spiffe://cluster.local/ns/x/sa/edge-gateway";
        let id = WorkloadId::from_forwarded_client_cert(xfcc).unwrap();
        assert_eq!(id.service_account, "edge-gateway");
        assert_eq!(
            WorkloadId::from_forwarded_client_cert("Hash=ab;Subject=\"CN=x\""),
            Err(IdentityError::NoForwardedUri)
        );
    }

    #[test]
    fn a_uri_inside_a_quoted_subject_is_not_the_caller() {
        // A certificate whose Subject holds `,URI=...order-service` must not pass as
        // order-service: the comma is inside the quotes.
        let xfcc = "By=spiffe://cluster.local/ns/x/sa/payment-service;Hash=ab;\
                    Subject=\"CN=evil,URI=spiffe://cluster.local/ns/x/sa/order-service\";\
                    URI=spiffe://cluster.local/ns/x/sa/evil";
        let id = WorkloadId::from_forwarded_client_cert(xfcc).unwrap();
        assert_eq!(id.service_account, "evil");
        assert!(matches!(
            WorkloadId::from_forwarded_client_cert(
                "URI=spiffe://a/ns/b/sa/c;URI=spiffe://a/ns/b/sa/d"
            ),
            Err(IdentityError::SeveralForwardedUris)
        ));
        assert!(matches!(
            WorkloadId::from_forwarded_client_cert("Subject=\"CN=x;URI=spiffe://a/ns/b/sa/c"),
            Err(IdentityError::BadForwardedHeader(_))
        ));
    }
}
