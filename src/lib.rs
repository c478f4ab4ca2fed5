//! Tidegate: an outbound-only data movement gateway and its control plane.
//!
//! This facade re-exports the workspace's libraries so that one dependency gives an embedder
//! all of them, and holds the pieces the examples, benchmarks and tests share:
//!
//! * [`dev_tls`]: a throwaway certificate authority for loopback TLS;
//! * [`quickstart`]: a control plane and a gateway in one process copying a sample SQLite
//!   database to Parquet — what `cargo run --release --example quickstart` runs.
//!
//! | crate | what it owns |
//! |---|---|
//! | [`proto`] | command-and-control frames, row-data free |
//! | [`channel`] | per-connection channel keys and sealed frames |
//! | [`client`] | a client for the control plane's REST API |
//! | [`auth`] | gateway identity keys, enrollment tokens, TLS-bound JWTs |
//! | [`link`] | the handshake and sealed message exchange |
//! | [`rbac`] | role-based access control, deny by default |
//! | [`secrets`] | envelope encryption of credentials at rest |
//! | [`metadata`] | the control plane's metadata model |
//! | [`identity`] | passwords, login sessions, OpenID Connect login |
//! | [`replicate`] | the Arrow-based copy core: sources, sinks, Parquet |
//! | [`cdc`] | change data capture from PostgreSQL: logical replication into Arrow |
//! | [`gateway`] | the gateway runtime |
//! | [`control_plane`] | the control-plane runtime |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dev_tls;
pub mod quickstart;

pub use tidegate_assist as assist;
pub use tidegate_auth as auth;
pub use tidegate_cdc as cdc;
pub use tidegate_channel as channel;
pub use tidegate_client as client;
pub use tidegate_control_plane as control_plane;
pub use tidegate_gateway as gateway;
pub use tidegate_identity as identity;
pub use tidegate_link as link;
pub use tidegate_metadata as metadata;
pub use tidegate_proto as proto;
pub use tidegate_rbac as rbac;
pub use tidegate_replicate as replicate;
pub use tidegate_secrets as secrets;

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call it once at the start of
/// `main` or of a test: rustls refuses to guess when a process could have several.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
