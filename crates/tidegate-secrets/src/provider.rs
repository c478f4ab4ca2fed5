//! The key-encryption-key interface: local key file or a customer-managed KMS.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::{Error, KeyMaterial};

/// A boxed future, so that [`KeyProvider`] is object safe (`Arc<dyn KeyProvider>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A data key wrapped (encrypted) under a key-encryption key (KEK).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The KEK that wrapped it, as the provider names it (a key-file id, a KMS key ARN or
    /// version name).
    pub kek_id: String,
    /// The provider's ciphertext; opaque to everyone else.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("kek_id", &self.kek_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Holds key-encryption keys (KEKs) and wraps and unwraps data keys with them. The KEKs never
/// leave the provider; for a cloud KMS they never leave the KMS.
///
/// Contract:
///
/// * [`wrap`](KeyProvider::wrap) encrypts under the *current* KEK and authenticates `aad`
///   (AWS KMS: encryption context; GCP KMS: additional authenticated data; see
///   `docs/secrets.md` for Azure Key Vault). The returned [`WrappedKey::kek_id`] names that KEK.
/// * [`unwrap`](KeyProvider::unwrap) opens a key wrapped under any KEK the provider still
///   knows, with the same `aad`, and fails with [`Error::Unwrap`] if the ciphertext, the KEK or
///   the `aad` differ — it never returns wrong key material.
/// * Calls may be remote and slow; they are cancel-safe (dropping the future changes nothing)
///   and may run concurrently with each other and with a rotation.
/// * Errors name the KEK id, never key material.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The id of the KEK that new wraps use.
    fn current_kek_id(&self) -> BoxFuture<'_, Result<String, Error>>;

    /// Wraps `key` under the current KEK, binding `aad`.
    fn wrap<'a>(
        &'a self,
        key: &'a KeyMaterial,
        aad: &'a [u8],
    ) -> BoxFuture<'a, Result<WrappedKey, Error>>;

    /// Unwraps a key wrapped under any KEK this provider still knows, checking `aad`.
    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        aad: &'a [u8],
    ) -> BoxFuture<'a, Result<KeyMaterial, Error>>;
}
