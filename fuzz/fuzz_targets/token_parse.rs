//! Bearer tokens: arbitrary strings through the header check (algorithm pinning, key id)
//! and the signature and claims check against a fixed key. Must be an error, never a panic,
//! and never a success for bytes not signed by the key.
#![no_main]

use std::sync::LazyLock;

use jsonwebtoken::DecodingKey;
use libfuzzer_sys::fuzz_target;
use ordermesh_edge_gateway::auth;

static KEY: LazyLock<DecodingKey> = LazyLock::new(|| {
    // A fixed Ed25519 public key (32 bytes, base64url); the fuzzer holds no private key.
    DecodingKey::from_ed_components("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
        .unwrap_or_else(|_| DecodingKey::from_secret(b"unused"))
});
static RULES: LazyLock<jsonwebtoken::Validation> =
    LazyLock::new(|| auth::validation("https://ordermesh.local", "ordermesh"));

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = auth::token_kid(token);
    assert!(
        auth::decode_claims(token, &KEY, &RULES).is_err(),
        "a token nobody signed was accepted: {token:?}"
    );
});
