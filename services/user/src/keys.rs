//! Access-token signing keys. The current Ed25519 key signs; previous keys stay in the JWKS
//! so tokens they signed verify until they expire. A key's `kid` is derived from its public
//! key, so it is stable across restarts and replicas that share the key.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ordermesh_contracts::user::{Jwk, Jwks};
use ordermesh_platform::jwt::AccessClaims;
use rcgen::{KeyPair, PKCS_ED25519};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not an Ed25519 PKCS#8 PEM key: {reason}")]
    BadKey { what: String, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

struct VerifyingKey {
    kid: String,
    x: String,
}

pub struct SigningKeys {
    kid: String,
    encoding: EncodingKey,
    published: Vec<VerifyingKey>,
    /// Derives each session's next refresh secret from the one presented (see
    /// [`SigningKeys::next_refresh_secret`]); every replica sharing the signing key agrees.
    rotation_key: [u8; 32],
}

fn public_of(pem: &str, what: &str) -> Result<(KeyPair, VerifyingKey), KeyError> {
    let bad = |reason: String| KeyError::BadKey {
        what: what.to_string(),
        reason,
    };
    let pair = KeyPair::from_pem(pem).map_err(|e| bad(e.to_string()))?;
    if !pair.is_compatible(&PKCS_ED25519) {
        return Err(bad("not an Ed25519 key".into()));
    }
    let raw = pair.public_key_raw().to_vec();
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(&raw)[..12]);
    Ok((
        pair,
        VerifyingKey {
            kid,
            x: URL_SAFE_NO_PAD.encode(raw),
        },
    ))
}

impl SigningKeys {
    /// The current key from PEM, plus previous keys still to be published.
    pub fn from_pem(current: &str, previous: &[String]) -> Result<Self, KeyError> {
        let (_, verifying) = public_of(current, "the signing key")?;
        let encoding =
            EncodingKey::from_ed_pem(current.as_bytes()).map_err(|e| KeyError::BadKey {
                what: "the signing key".into(),
                reason: e.to_string(),
            })?;
        let mut published = vec![];
        let kid = verifying.kid.clone();
        published.push(verifying);
        for (i, pem) in previous.iter().enumerate() {
            let (_, v) = public_of(pem, &format!("previous key {i}"))?;
            if v.kid != kid {
                published.push(v);
            }
        }
        let rotation_key = Sha256::new()
            .chain_update(b"ordermesh refresh-token rotation v1\0")
            .chain_update(current.trim().as_bytes())
            .finalize()
            .into();
        Ok(Self {
            kid,
            encoding,
            published,
            rotation_key,
        })
    }

    /// The refresh secret that replaces `presented` in session `session_id`: an HMAC of it
    /// under a key only user-service holds. Being a function of the presented secret, a retry
    /// with the same token can be answered with the same new token, while whoever holds only
    /// old tokens cannot compute new ones.
    pub fn next_refresh_secret(&self, session_id: &str, presented: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.rotation_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(session_id.as_bytes());
        mac.update(b"\0");
        mac.update(presented.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A new random key (PKCS#8 PEM).
    pub fn generate_pem() -> Result<String, KeyError> {
        KeyPair::generate_for(&PKCS_ED25519)
            .map(|k| k.serialize_pem())
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Loads `path`, creating it (mode 0600) with a new key on first use.
    pub fn load_or_create(path: &Path) -> Result<String, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => Ok(pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let pem = Self::generate_pem()?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(pem.as_bytes()).map_err(io)?;
                Ok(pem)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .published
                .iter()
                .map(|k| Jwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    x: k.x.clone(),
                    kid: k.kid.clone(),
                    alg: "EdDSA".into(),
                    r#use: "sig".into(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://ordermesh.local".into(),
            aud: "ordermesh".into(),
            sub: "u1".into(),
            exp: 4_000_000_000,
            iat: 1_700_000_000,
            nbf: 1_700_000_000,
            jti: "j1".into(),
            roles: vec!["user".into()],
            sid: String::new(),
        }
    }

    #[test]
    fn tokens_verify_with_the_published_jwk_and_rotation_keeps_old_keys() {
        let old = SigningKeys::generate_pem().unwrap();
        let new = SigningKeys::generate_pem().unwrap();
        let keys = SigningKeys::from_pem(&new, std::slice::from_ref(&old)).unwrap();
        let token = keys.sign(&claims()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(keys.kid()));
        let jwks = keys.jwks();
        assert_eq!(jwks.keys.len(), 2);
        let jwk = jwks.keys.iter().find(|k| k.kid == keys.kid()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["ordermesh"]);
        validation.set_issuer(&["https://ordermesh.local"]);
        let decoded = jsonwebtoken::decode::<AccessClaims>(
            &token,
            &DecodingKey::from_ed_components(&jwk.x).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims, claims());
        // The kid is a function of the key: reloading gives the same one.
        assert_eq!(SigningKeys::from_pem(&new, &[]).unwrap().kid(), keys.kid());
    }

    #[test]
    fn a_non_ed25519_key_is_refused() {
        let p256 = KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            SigningKeys::from_pem(&p256, &[]),
            Err(KeyError::BadKey { .. })
        ));
    }
}
