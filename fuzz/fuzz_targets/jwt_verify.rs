//! Gateway tokens: what anyone who reaches the control plane's WebSocket endpoint can send.
//!
//! The first input byte picks a mode, the rest is the payload:
//!
//! * even — the payload as a token string (lossy UTF-8): `claimed_gateway` and `verify_token`
//!   must not panic, and nothing the fuzzer writes may verify.
//! * odd — a freshly minted valid token, XORed with the payload: it verifies if and only if no
//!   byte changed.
//!
//! The identity key is fixed (derived from a constant seed), so that corpus entries signed with
//! it (see `seeds.py`) get past the signature check into claim validation. Those seeds are
//! minted long ago, so they are expired and never verify; a seed minted for the present would
//! verify for a minute and trip the even mode's assertion.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidegate_auth::{IdentityKey, claimed_gateway, now_s, verify_token};

const GATEWAY: &str = "gw-fuzz";
const AUDIENCE: &str = "cp-fuzz";
const BINDING: &[u8] = b"exported keying material of the fuzz TLS session";

/// PKCS#8 v1 wrapping of an Ed25519 seed: this prefix, then the 32 seed bytes.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn key() -> &'static IdentityKey {
    static KEY: OnceLock<IdentityKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&[0x42; 32]);
        IdentityKey::from_pkcs8_der(&der).expect("a well-formed Ed25519 PKCS#8 key")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let key = key();
    let public = key.public_key();
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(payload);
        let _ = claimed_gateway(&token);
        assert!(
            verify_token(&token, GATEWAY, &public, AUDIENCE, BINDING).is_err(),
            "a token not minted with the key verified"
        );
    } else {
        let original = key
            .mint_token(GATEWAY, AUDIENCE, BINDING, now_s(), 60)
            .expect("minting with a valid key");
        let mut bytes = original.clone().into_bytes();
        let len = bytes.len();
        for (i, b) in payload.iter().enumerate() {
            bytes[i % len] ^= b;
        }
        let token = String::from_utf8_lossy(&bytes);
        let _ = claimed_gateway(&token);
        let verified = verify_token(&token, GATEWAY, &public, AUDIENCE, BINDING);
        if token == original {
            verified.expect("an untouched token verifies");
        } else {
            assert!(verified.is_err(), "a tampered token verified");
        }
    }
});
