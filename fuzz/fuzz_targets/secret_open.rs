//! Sealed secrets: bytes read back from the metadata database, which an attacker with write
//! access to it chooses.
//!
//! The first input byte picks a mode (modulo 3), the rest is the payload:
//!
//! * 0 — the payload as a blob: `sealed_version`, `open` and `reseal` must not panic, and
//!   nothing the fuzzer writes may open.
//! * 1 — a freshly sealed blob XORed with the payload (cycled): it opens, to the sealed
//!   secret, if and only if no byte changed; a tampered blob never opens nor reseals.
//! * 2 — a well-formed header for data-key version 1 followed by the payload: gets past header
//!   parsing into authentication; must not open.
//!
//! The data key is fixed and "wrapped" by an identity provider, so the keyring is built without
//! files or randomness; the nonce of each seal is still random.

#![no_main]

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tidegate_secrets::{
    BoxFuture, Error, KeyMaterial, KeyProvider, Keyring, WrappedDataKey, WrappedKey,
    sealed_version,
};

const TENANT: &str = "tenant-fuzz";
const OBJECT: &str = "conn_fuzz";
const SECRET: &[u8] = br#"{"user":"fuzz","password":"not-a-real-one"}"#;

/// Wraps nothing: the "wrapped" key is the key itself. Only for building a keyring here.
#[derive(Debug)]
struct Identity;

impl KeyProvider for Identity {
    fn current_kek_id(&self) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async { Ok("identity".to_owned()) })
    }

    fn wrap<'a>(
        &'a self,
        key: &'a KeyMaterial,
        _aad: &'a [u8],
    ) -> BoxFuture<'a, Result<WrappedKey, Error>> {
        Box::pin(async move {
            Ok(WrappedKey {
                kek_id: "identity".to_owned(),
                ciphertext: key.expose().to_vec(),
            })
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        _aad: &'a [u8],
    ) -> BoxFuture<'a, Result<KeyMaterial, Error>> {
        Box::pin(async move {
            KeyMaterial::from_slice(&wrapped.ciphertext).ok_or(Error::Unwrap {
                kek_id: wrapped.kek_id.clone(),
            })
        })
    }
}

/// Polls a future that never waits (the identity provider's) to completion.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the identity provider never waits"),
    }
}

fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| {
        let wrapped = WrappedDataKey {
            tenant: TENANT.to_owned(),
            version: 1,
            kek_id: "identity".to_owned(),
            ciphertext: vec![0x42; 32],
        };
        ready(Keyring::load(std::sync::Arc::new(Identity), TENANT, [wrapped]))
            .expect("a keyring from a fixed key")
    })
}

fn must_not_open(keyring: &Keyring, blob: &[u8]) {
    let _ = sealed_version(blob);
    assert!(
        keyring.open(OBJECT, blob).is_err(),
        "a blob the fuzzer wrote opened"
    );
    assert!(
        keyring.reseal(OBJECT, blob).is_err(),
        "a blob the fuzzer wrote resealed"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let keyring = keyring();
    match mode % 3 {
        0 => must_not_open(keyring, payload),
        1 => {
            let original = keyring.seal(OBJECT, SECRET).expect("sealing a small secret");
            let mut blob = original.clone();
            let len = blob.len();
            for (i, b) in payload.iter().enumerate() {
                blob[i % len] ^= b;
            }
            if blob == original {
                let opened = keyring.open(OBJECT, &blob).expect("an untouched blob opens");
                assert_eq!(opened.expose(), SECRET);
                assert_eq!(sealed_version(&blob).ok(), Some(1));
            } else {
                must_not_open(keyring, &blob);
            }
        }
        _ => {
            let mut blob = b"tgs\x01\x00\x00\x00\x01".to_vec();
            blob.extend_from_slice(payload);
            must_not_open(keyring, &blob);
        }
    }
});
