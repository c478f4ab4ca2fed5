//! Checks on values before they reach a store.

use crate::Error;

/// Checks a display name: 1 to 200 characters, no control characters.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), Error> {
    check_name(field, name)
}

pub(crate) fn check_name(field: &'static str, name: &str) -> Result<(), Error> {
    check_text(field, name, 1, 200)
}

/// Checks a text: `min` to `max` characters, no control characters.
pub(crate) fn check_text(
    field: &'static str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<(), Error> {
    let len = text.chars().count();
    if len < min || len > max {
        return Err(Error::Invalid {
            field,
            reason: format!("must be {min} to {max} characters, got {len}"),
        });
    }
    if text.chars().any(char::is_control) {
        return Err(Error::Invalid {
            field,
            reason: "must not contain control characters".into(),
        });
    }
    Ok(())
}

/// Checks an opaque byte string: 1 to `max` bytes.
pub(crate) fn check_bytes(field: &'static str, bytes: &[u8], max: usize) -> Result<(), Error> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(Error::Invalid {
            field,
            reason: format!("must be 1 to {max} bytes, got {}", bytes.len()),
        });
    }
    Ok(())
}

/// Checks the length of a free text (newlines allowed): at most `max` characters.
pub(crate) fn check_len(field: &'static str, text: &str, max: usize) -> Result<(), Error> {
    let len = text.chars().count();
    if len > max {
        return Err(Error::Invalid {
            field,
            reason: format!("must be at most {max} characters, got {len}"),
        });
    }
    Ok(())
}
