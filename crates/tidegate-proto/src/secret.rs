//! Credentials carried by commands: redacted in `Debug`, zeroized on drop.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string (a password, an access key). Its memory is wiped when it is dropped and its
/// `Debug` output is `"<redacted>"`, so it cannot leak into a log line by accident.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself. Call this only where the secret is handed to the system that needs
    /// it (a database driver, a signing function), never to format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Named secrets of one connection (for example `password`, `secret_access_key`).
///
/// `Debug` lists the names only. Every value is zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMap(BTreeMap<String, SecretString>);

impl SecretMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a secret.
    pub fn insert(&mut self, name: impl Into<String>, secret: SecretString) {
        self.0.insert(name.into(), secret);
    }

    /// Removes a secret; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }

    /// Looks a secret up by name.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.0.get(name)
    }

    /// The names of the secrets held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether no secret is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let mut map = SecretMap::new();
        map.insert("password", SecretString::new("hunter2-canary"));
        let shown = format!("{map:?} {:?}", map.get("password"));
        assert!(!shown.contains("hunter2-canary"), "{shown}");
        assert!(shown.contains("password"), "{shown}");
    }
}
