//! Envelope encryption of credentials at rest.
//!
//! The control plane keeps connection credentials sealed in its metadata database:
//!
//! * each **tenant** has **data keys** (256-bit, versioned; the newest seals, every version
//!   still held opens);
//! * each data key is stored only **wrapped** under a **key-encryption key** (KEK) that a
//!   [`KeyProvider`] holds: the local key file [`LocalKeyFile`] by default, or a
//!   customer-managed key in a cloud KMS (`docs/secrets.md` sketches AWS KMS, GCP KMS and Azure
//!   Key Vault providers);
//! * a secret is sealed with XChaCha20-Poly1305 under the tenant's data key into a
//!   self-describing blob bound to the tenant and the object (connection) id, so a blob copied
//!   to another connection or tenant does not open.
//!
//! The caller persists the plain [`WrappedDataKey`] records and the sealed blobs; this crate
//! owns no storage but the key file.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tidegate_secrets::{KeyProvider, Keyring, LocalKeyFile};
//!
//! let dir = tempfile::tempdir()?;
//! let kek = Arc::new(LocalKeyFile::open_or_create(dir.path().join("kek"))?);
//! let (keyring, wrapped) = Keyring::create(kek.clone(), "acme").await?;
//! let mut stored = vec![wrapped]; // what the metadata database keeps
//! let blob = keyring.seal("conn_1", br#"{"password":"hunter2"}"#)?;
//! assert_eq!(keyring.open("conn_1", &blob)?.expose(), br#"{"password":"hunter2"}"#);
//! assert!(keyring.open("conn_2", &blob).is_err());
//!
//! // KEK rotation: a new KEK, the data keys re-wrapped and persisted, the old KEK retired.
//! let old_kek = kek.current_kek_id().await?;
//! kek.rotate()?;
//! stored = keyring.rewrap().await?;
//! kek.retire(&old_kek)?;
//! let reloaded = Keyring::load(kek, "acme", stored).await?;
//! assert!(reloaded.open("conn_1", &blob).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Key material lives in [`KeyMaterial`] and opened secrets in [`SecretBytes`]: both are
//! zeroized on drop and print as `<redacted>`. No error names a key or a secret.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod key;
mod keyring;
mod local;
mod provider;

use std::path::PathBuf;

// The public interface.
pub use key::{KeyMaterial, SecretBytes};
pub use keyring::{
    FORMAT_VERSION, HEADER_LEN, Keyring, MAX_SECRET_LEN, TAG_LEN, WrappedDataKey, rewrap_data_key,
    sealed_version,
};
pub use local::LocalKeyFile;
pub use provider::{BoxFuture, KeyProvider, WrappedKey};

/// What went wrong. Variants name files, KEK ids, tenants, versions and object ids — never key
/// material or secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system's random source failed.
    #[error("the random source failed")]
    Random,
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error(
        "key file {path} has mode {mode:03o}: it must not be accessible to group or others \
         (chmod 600)"
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not in the expected format.
    #[error("key file {path}, line {line}: {reason}")]
    KeyFileMalformed {
        /// The key file.
        path: PathBuf,
        /// The line (0 for the file as a whole).
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A KEK the provider does not know (never had, or retired).
    #[error("unknown key-encryption key `{kek_id}`")]
    UnknownKek {
        /// The KEK id.
        kek_id: String,
    },
    /// The active KEK cannot be retired.
    #[error("key-encryption key `{kek_id}` is the active one and cannot be retired")]
    ActiveKek {
        /// The KEK id.
        kek_id: String,
    },
    /// Wrapping a data key failed.
    #[error("wrapping a data key under `{kek_id}` failed")]
    Wrap {
        /// The KEK id.
        kek_id: String,
    },
    /// A wrapped data key did not open: wrong KEK, tampered ciphertext, or another tenant's or
    /// version's key.
    #[error("a data key wrapped under `{kek_id}` did not unwrap (wrong key or tampered)")]
    Unwrap {
        /// The KEK id.
        kek_id: String,
    },
    /// A remote key provider (a KMS) failed.
    #[error("key provider: {message}")]
    Provider {
        /// What the provider said (no key material).
        message: String,
        /// Whether trying again may succeed (throttling, timeouts).
        retryable: bool,
    },
    /// A tenant or object id that cannot be used.
    #[error("invalid {kind}: {reason}")]
    InvalidName {
        /// "tenant" or "object id".
        kind: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A wrapped data key of another tenant was given.
    #[error("data key for tenant `{found}` given to the keyring of tenant `{expected}`")]
    TenantMismatch {
        /// The keyring's tenant.
        expected: String,
        /// The key's tenant.
        found: String,
    },
    /// Two data keys with the same version.
    #[error("tenant `{tenant}` has data key version {version} twice")]
    DuplicateVersion {
        /// The tenant.
        tenant: String,
        /// The version.
        version: u32,
    },
    /// A keyring without any data key.
    #[error("tenant `{tenant}` has no data key")]
    NoDataKey {
        /// The tenant.
        tenant: String,
    },
    /// A blob sealed with a data-key version this keyring does not hold.
    #[error("tenant `{tenant}` holds no data key version {version}")]
    UnknownDataKey {
        /// The tenant.
        tenant: String,
        /// The version the blob names.
        version: u32,
    },
    /// A blob that is not a sealed secret of a supported format.
    #[error("malformed sealed secret: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// A sealed secret did not open: tampered, or sealed for another tenant or object.
    #[error(
        "sealed secret for `{object}` of tenant `{tenant}` did not open (tampered, or sealed for another object or tenant)"
    )]
    Open {
        /// The tenant.
        tenant: String,
        /// The object id asked for.
        object: String,
    },
    /// A secret larger than [`MAX_SECRET_LEN`].
    #[error("secret of {len} bytes is larger than {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Error {
    /// Whether trying again may succeed: a transient provider failure.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Provider {
                retryable: true,
                ..
            }
        )
    }
}
