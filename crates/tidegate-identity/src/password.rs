//! Local-account passwords: Argon2id PHC strings.

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::Error;

/// Shortest password accepted, in characters.
pub const MIN_CHARS: usize = 12;
/// Longest password accepted, in bytes: hashing cost must not be the attacker's choice.
pub const MAX_BYTES: usize = 1024;

/// A hash of a password nobody knows, verified when an account has no password, so that a
/// failed login takes as long for an unknown user as for a wrong password.
static DUMMY: LazyLock<Option<String>> =
    LazyLock::new(|| hash("a password nobody knows: dummy for timing").ok());

/// Hashes a new password with Argon2id (default parameters: 19 MiB, 2 passes, 1 lane) and a
/// random salt, after checking the policy: at least [`MIN_CHARS`] characters, at most
/// [`MAX_BYTES`] bytes, not all whitespace.
pub fn hash(password: &str) -> Result<String, Error> {
    check_policy(password)?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|_| Error::Hash)?;
    Ok(hash.to_string())
}

fn check_policy(password: &str) -> Result<(), Error> {
    if password.chars().count() < MIN_CHARS {
        return Err(Error::WeakPassword("shorter than 12 characters"));
    }
    if password.len() > MAX_BYTES {
        return Err(Error::WeakPassword("longer than 1024 bytes"));
    }
    if password.trim().is_empty() {
        return Err(Error::WeakPassword("only whitespace"));
    }
    Ok(())
}

/// Whether `password` matches the stored PHC string. `None` (no local password, or no such
/// account) still spends one verification and returns false. A malformed stored hash is a
/// mismatch, never a panic.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let candidate = if password.len() > MAX_BYTES {
        // Still spend the time, on a fixed input.
        ""
    } else {
        password
    };
    let (phc, real) = match stored {
        Some(phc) => (phc, true),
        None => match DUMMY.as_deref() {
            Some(dummy) => (dummy, false),
            None => return false,
        },
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let matched = Argon2::default()
        .verify_password(candidate.as_bytes(), &parsed)
        .is_ok();
    matched && real && password.len() <= MAX_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse battery", Some(&a)));
        assert!(!verify("correct horse batterY", Some(&a)));
        assert!(!verify("", Some(&a)));
    }

    #[test]
    fn policy_and_malformed_input() {
        assert!(matches!(hash("short"), Err(Error::WeakPassword(_))));
        assert!(matches!(hash(&" ".repeat(20)), Err(Error::WeakPassword(_))));
        assert!(matches!(
            hash(&"x".repeat(MAX_BYTES + 1)),
            Err(Error::WeakPassword(_))
        ));
        assert!(hash("ünïcödé pässwörd ✓").is_ok());
        assert!(!verify("anything at all", None));
        assert!(!verify("anything at all", Some("not a phc string")));
        assert!(!verify("anything at all", Some("$argon2id$v=19$m=1")));
        assert!(!verify(
            &"x".repeat(MAX_BYTES + 1),
            Some(DUMMY.as_deref().unwrap())
        ));
    }
}
