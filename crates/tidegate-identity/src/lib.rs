//! How people prove who they are to the control plane.
//!
//! * [`password`]: local accounts. Passwords are hashed with Argon2id (PHC strings, OWASP
//!   parameters); verification takes the same time whether or not the account exists.
//! * [`session`]: the bearer token a login gives. Only its SHA-256 digest is stored, so a
//!   leaked database holds no usable token.
//! * [`oidc`]: OpenID Connect login (authorization code with PKCE, discovery, ID-token
//!   validation including nonce and access-token hash), and the mapping of one ID-token claim
//!   to a user name.
//!
//! The crate holds no state about users: the control plane stores users and sessions in its
//! metadata and decides what a user may do with `tidegate-rbac`. Nothing here logs or returns a
//! password, token, client secret or authorization code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod oidc;
pub mod password;
pub mod session;

pub use zeroize::Zeroizing;

/// Why an identity operation failed. Messages never carry passwords, tokens or codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A new password does not meet the policy; the message says why.
    #[error("password rejected: {0}")]
    WeakPassword(&'static str),
    /// Hashing failed (it does not for valid parameters; kept for completeness).
    #[error("password hashing failed")]
    Hash,
    /// The OpenID Connect configuration is invalid; the message names the field.
    #[error("OpenID Connect configuration: {0}")]
    OidcConfig(String),
    /// The provider could not be reached or answered with something unusable.
    #[error("OpenID provider {issuer}: {reason}")]
    OidcProvider {
        /// The issuer URL.
        issuer: String,
        /// What went wrong, without secrets.
        reason: String,
    },
    /// The login could not be completed: unknown or expired state, an error from the provider,
    /// or an ID token that failed validation. The message says which, never the token.
    #[error("OpenID Connect login refused: {0}")]
    OidcLogin(String),
}
