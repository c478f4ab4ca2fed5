//! A tenant's data keys and the sealed-secret format.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::key::fill_random;
use crate::provider::{KeyProvider, WrappedKey};
use crate::{Error, KeyMaterial, SecretBytes};

/// The sealed-blob format this crate writes (byte 3 of a blob).
pub const FORMAT_VERSION: u8 = 1;
/// The largest secret [`Keyring::seal`] accepts: credentials are small.
pub const MAX_SECRET_LEN: usize = 64 * 1024;
/// Bytes before the ciphertext: magic (3), format version (1), data-key version (4), nonce
/// (24).
pub const HEADER_LEN: usize = 32;
/// Bytes of the authentication tag after the ciphertext.
pub const TAG_LEN: usize = 16;

const MAGIC: [u8; 3] = *b"tgs";
const NONCE_LEN: usize = 24;
const MAX_NAME: usize = 1024;
const DATA_KEY_CONTEXT: &[u8] = b"tidegate-data-key\x01";
const SECRET_CONTEXT: &[u8] = b"tidegate-secret\x01";

/// A tenant's data key as the control plane stores it: wrapped under a key-encryption key.
/// Plain data, serializable (`ciphertext` as base64); persist every one [`Keyring::create`],
/// [`Keyring::rotate_data_key`] and [`Keyring::rewrap`] hand back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDataKey {
    /// The tenant the key belongs to (bound into the wrapping).
    pub tenant: String,
    /// The data-key version, from 1 (bound into the wrapping).
    pub version: u32,
    /// The key-encryption key that wrapped it.
    pub kek_id: String,
    /// The key provider's ciphertext.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDataKey")
            .field("tenant", &self.tenant)
            .field("version", &self.version)
            .field("kek_id", &self.kek_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// One tenant's data keys, unwrapped in memory: seals new secrets with the newest version and
/// opens secrets sealed with any version it holds.
///
/// Share it as `Arc<Keyring>`: [`seal`](Keyring::seal), [`open`](Keyring::open) and
/// [`reseal`](Keyring::reseal) are synchronous and local; the rotations call the key provider
/// without holding any lock, so seals and opens go on while they run. Rotations of one tenant
/// are not meant to run concurrently with each other (a lost race is
/// [`Error::DuplicateVersion`]).
pub struct Keyring {
    tenant: String,
    provider: Arc<dyn KeyProvider>,
    state: RwLock<State>,
}

struct State {
    keys: BTreeMap<u32, KeyMaterial>,
    wrapped: BTreeMap<u32, WrappedDataKey>,
}

impl State {
    fn active(&self) -> Option<(u32, &KeyMaterial)> {
        self.keys.last_key_value().map(|(v, k)| (*v, k))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Keyring")
            .field("tenant", &self.tenant)
            .field("versions", &state.keys.keys().collect::<Vec<_>>())
            .field("provider", &self.provider)
            .finish()
    }
}

impl Keyring {
    /// A new tenant: makes data key version 1 and wraps it. Persist the returned key.
    pub async fn create(
        provider: Arc<dyn KeyProvider>,
        tenant: &str,
    ) -> Result<(Self, WrappedDataKey), Error> {
        check_name("tenant", tenant)?;
        let key = KeyMaterial::generate()?;
        let wrapped = wrap_data_key(&*provider, tenant, 1, &key).await?;
        let keyring = Self {
            tenant: tenant.to_owned(),
            provider,
            state: RwLock::new(State {
                keys: BTreeMap::from([(1, key)]),
                wrapped: BTreeMap::from([(1, wrapped.clone())]),
            }),
        };
        Ok((keyring, wrapped))
    }

    /// A known tenant: unwraps its stored data keys (at least one; the highest version seals).
    pub async fn load(
        provider: Arc<dyn KeyProvider>,
        tenant: &str,
        wrapped: impl IntoIterator<Item = WrappedDataKey>,
    ) -> Result<Self, Error> {
        check_name("tenant", tenant)?;
        let mut state = State {
            keys: BTreeMap::new(),
            wrapped: BTreeMap::new(),
        };
        for w in wrapped {
            if w.tenant != tenant {
                return Err(Error::TenantMismatch {
                    expected: tenant.to_owned(),
                    found: w.tenant,
                });
            }
            if state.keys.contains_key(&w.version) {
                return Err(Error::DuplicateVersion {
                    tenant: w.tenant,
                    version: w.version,
                });
            }
            let key = unwrap_data_key(&*provider, &w).await?;
            state.keys.insert(w.version, key);
            state.wrapped.insert(w.version, w);
        }
        if state.keys.is_empty() {
            return Err(Error::NoDataKey {
                tenant: tenant.to_owned(),
            });
        }
        Ok(Self {
            tenant: tenant.to_owned(),
            provider,
            state: RwLock::new(state),
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The data-key version new seals use (the highest).
    pub fn active_version(&self) -> u32 {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.active().map_or(0, |(v, _)| v)
    }

    /// The wrapped forms of every data key held, by version.
    pub fn wrapped_keys(&self) -> Vec<WrappedDataKey> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.wrapped.values().cloned().collect()
    }

    /// Seals `secret` for the object `object_id` (a connection id) with the active data key.
    /// The blob opens only in this tenant's keyring and only for the same `object_id`.
    pub fn seal(&self, object_id: &str, secret: &[u8]) -> Result<Vec<u8>, Error> {
        check_name("object id", object_id)?;
        if secret.len() > MAX_SECRET_LEN {
            return Err(Error::TooLarge {
                len: secret.len(),
                max: MAX_SECRET_LEN,
            });
        }
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let (version, key) = state.active().ok_or_else(|| Error::NoDataKey {
            tenant: self.tenant.clone(),
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut blob = Vec::with_capacity(HEADER_LEN + secret.len() + TAG_LEN);
        blob.extend_from_slice(&MAGIC);
        blob.push(FORMAT_VERSION);
        blob.extend_from_slice(&version.to_be_bytes());
        blob.extend_from_slice(&nonce);
        let aad = secret_aad(&blob, &self.tenant, object_id);
        let sealed = XChaCha20Poly1305::new(key.expose().into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::TooLarge {
                len: secret.len(),
                max: MAX_SECRET_LEN,
            })?;
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens a blob sealed by [`seal`](Keyring::seal) for `object_id`. The blob is hostile
    /// input: anything malformed, tampered with, sealed for another tenant or object, or under
    /// a data key this keyring does not hold is an error, never a panic.
    pub fn open(&self, object_id: &str, blob: &[u8]) -> Result<SecretBytes, Error> {
        check_name("object id", object_id)?;
        let header = Header::parse(blob)?;
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let key = state
            .keys
            .get(&header.version)
            .ok_or_else(|| Error::UnknownDataKey {
                tenant: self.tenant.clone(),
                version: header.version,
            })?;
        let (head, sealed) = blob.split_at(HEADER_LEN);
        let aad = secret_aad(head, &self.tenant, object_id);
        let mut plain = Zeroizing::new(sealed.to_vec());
        XChaCha20Poly1305::new(key.expose().into())
            .decrypt_in_place(&XNonce::from(header.nonce), &aad, &mut *plain)
            .map_err(|_| Error::Open {
                tenant: self.tenant.clone(),
                object: object_id.escape_debug().to_string(),
            })?;
        Ok(SecretBytes::new(plain))
    }

    /// Moves a blob to the active data key: `Ok(None)` if it is sealed with it already,
    /// otherwise the blob sealed anew (store it in place of the old one).
    pub fn reseal(&self, object_id: &str, blob: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if sealed_version(blob)? == self.active_version() {
            // Still authenticate it: a reseal must not launder a tampered blob.
            self.open(object_id, blob)?;
            return Ok(None);
        }
        let secret = self.open(object_id, blob)?;
        self.seal(object_id, secret.expose()).map(Some)
    }

    /// Data-key rotation: makes a new data key the active one for new seals; blobs sealed
    /// with older versions still open. Persist the returned key, then
    /// [`reseal`](Keyring::reseal) old blobs at leisure.
    pub async fn rotate_data_key(&self) -> Result<WrappedDataKey, Error> {
        let version =
            self.active_version()
                .checked_add(1)
                .ok_or_else(|| Error::DuplicateVersion {
                    tenant: self.tenant.clone(),
                    version: u32::MAX,
                })?;
        let key = KeyMaterial::generate()?;
        let wrapped = wrap_data_key(&*self.provider, &self.tenant, version, &key).await?;
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.keys.contains_key(&version) {
            return Err(Error::DuplicateVersion {
                tenant: self.tenant.clone(),
                version,
            });
        }
        state.keys.insert(version, key);
        state.wrapped.insert(version, wrapped.clone());
        Ok(wrapped)
    }

    /// KEK rotation: re-wraps every data key not wrapped under the provider's current KEK.
    /// Sealed secrets are untouched and seals and opens go on meanwhile. Returns the re-wrapped
    /// keys: persist them, and only then retire the old KEK.
    pub async fn rewrap(&self) -> Result<Vec<WrappedDataKey>, Error> {
        let current = self.provider.current_kek_id().await?;
        let stale: Vec<(u32, KeyMaterial)> = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            state
                .wrapped
                .values()
                .filter(|w| w.kek_id != current)
                .filter_map(|w| Some((w.version, state.keys.get(&w.version)?.clone())))
                .collect()
        };
        let mut rewrapped = Vec::with_capacity(stale.len());
        for (version, key) in stale {
            rewrapped.push(wrap_data_key(&*self.provider, &self.tenant, version, &key).await?);
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        for w in &rewrapped {
            state.wrapped.insert(w.version, w.clone());
        }
        Ok(rewrapped)
    }
}

/// Re-wraps one stored data key under the provider's current KEK without loading a keyring
/// (for tenants that are not in memory): unwrap with the KEK it names, wrap with the current
/// one. A key already under the current KEK comes back unchanged.
pub async fn rewrap_data_key(
    provider: &dyn KeyProvider,
    wrapped: &WrappedDataKey,
) -> Result<WrappedDataKey, Error> {
    if wrapped.kek_id == provider.current_kek_id().await? {
        return Ok(wrapped.clone());
    }
    let key = unwrap_data_key(provider, wrapped).await?;
    wrap_data_key(provider, &wrapped.tenant, wrapped.version, &key).await
}

/// The data-key version a sealed blob names, from its header (without authenticating it).
pub fn sealed_version(blob: &[u8]) -> Result<u32, Error> {
    Header::parse(blob).map(|h| h.version)
}

async fn wrap_data_key(
    provider: &dyn KeyProvider,
    tenant: &str,
    version: u32,
    key: &KeyMaterial,
) -> Result<WrappedDataKey, Error> {
    let aad = data_key_aad(tenant, version);
    let WrappedKey { kek_id, ciphertext } = provider.wrap(key, &aad).await?;
    Ok(WrappedDataKey {
        tenant: tenant.to_owned(),
        version,
        kek_id,
        ciphertext,
    })
}

async fn unwrap_data_key(
    provider: &dyn KeyProvider,
    wrapped: &WrappedDataKey,
) -> Result<KeyMaterial, Error> {
    check_name("tenant", &wrapped.tenant)?;
    let aad = data_key_aad(&wrapped.tenant, wrapped.version);
    let key = WrappedKey {
        kek_id: wrapped.kek_id.clone(),
        ciphertext: wrapped.ciphertext.clone(),
    };
    provider.unwrap(&key, &aad).await
}

/// The parsed header of a sealed blob.
struct Header {
    version: u32,
    nonce: [u8; NONCE_LEN],
}

impl Header {
    fn parse(blob: &[u8]) -> Result<Self, Error> {
        let malformed = |reason| Error::Malformed { reason };
        let (magic, rest) = blob
            .split_first_chunk::<3>()
            .ok_or(malformed("shorter than a header"))?;
        if *magic != MAGIC {
            return Err(malformed("not a sealed secret (bad magic)"));
        }
        let (&format, rest) = rest
            .split_first()
            .ok_or(malformed("shorter than a header"))?;
        if format != FORMAT_VERSION {
            return Err(malformed("unsupported format version"));
        }
        let (version, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(malformed("shorter than a header"))?;
        let (nonce, sealed) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(malformed("shorter than a header"))?;
        if sealed.len() < TAG_LEN {
            return Err(malformed("shorter than header and tag"));
        }
        if sealed.len() > MAX_SECRET_LEN + TAG_LEN {
            return Err(malformed("longer than the largest secret"));
        }
        Ok(Self {
            version: u32::from_be_bytes(*version),
            nonce: *nonce,
        })
    }
}

fn data_key_aad(tenant: &str, version: u32) -> Vec<u8> {
    let mut aad = DATA_KEY_CONTEXT.to_vec();
    push_name(&mut aad, tenant);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn secret_aad(header: &[u8], tenant: &str, object_id: &str) -> Vec<u8> {
    let mut aad = SECRET_CONTEXT.to_vec();
    aad.extend_from_slice(header);
    push_name(&mut aad, tenant);
    push_name(&mut aad, object_id);
    aad
}

/// Appends a length-prefixed name (names are at most `MAX_NAME` bytes, checked on entry; a
/// longer one, which cannot be sealed, is cut at the prefix's range and then fails to open).
fn push_name(out: &mut Vec<u8>, name: &str) {
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&name.as_bytes()[..usize::from(len)]);
}

fn check_name(kind: &'static str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::InvalidName {
            kind,
            reason: "empty or longer than 1024 bytes",
        });
    }
    Ok(())
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
