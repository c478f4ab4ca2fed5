//! Key material and secret bytes: zeroized on drop, redacted in `Debug`.

use std::fmt;

use zeroize::Zeroizing;

use crate::Error;

/// 32 bytes of symmetric key material (a key-encryption key or a tenant's data key).
/// Zeroized on drop; `Debug` prints no byte of it.
#[derive(Clone)]
pub struct KeyMaterial(Zeroizing<[u8; 32]>);

impl KeyMaterial {
    /// Fresh random key material from the operating system.
    pub fn generate() -> Result<Self, Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(key.as_mut())?;
        Ok(Self(key))
    }

    /// Key material from bytes a key provider unwrapped; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: &[u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(*array)))
    }

    /// The bytes, for a key provider to wrap. Do not copy them anywhere that outlives the call.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

/// An opened secret: zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub(crate) fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    /// The plaintext.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(buf).map_err(|_| Error::Random)
}
