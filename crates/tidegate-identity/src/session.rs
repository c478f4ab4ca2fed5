//! Login session tokens: random bearer tokens of which only a digest is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Every session token starts with this, so a leaked token is recognisable (secret scanners).
pub const PREFIX: &str = "tgs_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Length of a well-formed token: the prefix and 43 base64url characters.
const TOKEN_LEN: usize = PREFIX.len() + 43;

/// A new session token. The token goes to the user once; the control plane keeps only
/// [`SessionToken::digest`].
#[derive(Clone)]
pub struct SessionToken(Zeroizing<String>);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

impl SessionToken {
    /// Draws a token from the operating system's random source.
    ///
    /// # Panics
    /// If the operating system has no random source (as the rest of the control plane would).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        getrandom::fill(bytes.as_mut()).expect("operating system random source");
        Self(Zeroizing::new(format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes.as_ref())
        )))
    }

    /// The token, to hand to the user.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The digest to store and look the session up by.
    pub fn digest(&self) -> String {
        digest_of(&self.0)
    }
}

/// The digest of a presented token, or `None` when it cannot be a session token (wrong prefix
/// or length), so garbage never reaches the database.
pub fn digest_presented(token: &str) -> Option<String> {
    (token.len() == TOKEN_LEN
        && token.starts_with(PREFIX)
        && token[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| digest_of(token))
}

fn digest_of(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_only_their_digest_matches() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert_eq!(digest_presented(a.expose()), Some(a.digest()));
        assert_ne!(a.digest(), b.digest());
        assert!(!format!("{a:?}").contains(&a.expose()[PREFIX.len()..]));
    }

    #[test]
    fn malformed_tokens_have_no_digest() {
        let good = SessionToken::generate();
        for bad in [
            "",
            "tgs_",
            &good.expose()[1..],
            &format!("{}x", good.expose()),
            &good.expose().replace("tgs_", "xyz_"),
            &format!("tgs_{}", "é".repeat(21)),
            "tgs_'; DROP TABLE sessions; --aaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(digest_presented(bad), None, "{bad:?}");
        }
    }
}
