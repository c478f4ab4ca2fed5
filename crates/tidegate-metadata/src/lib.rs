//! The control plane's metadata: the model and its durable store.
//!
//! Everything here is metadata: names, settings, states and counts. No type can hold a row
//! value, and none holds a plaintext credential: the durable store keeps token digests,
//! password hashes, wrapped data keys and sealed credentials only.
//!
//! * [`MetadataStore`] is the durable store's contract and [`SqlStore`] its implementation on
//!   SQLite (one file, or memory for tests) and PostgreSQL (shared by several control planes).
//!   Open one with [`SqlStore::open`]; the schema migrates on open.
//! * The durable model: [`Tenant`], [`DataSpace`], [`User`] and its roles, [`LoginSession`],
//!   [`DataKey`], [`GatewayRecord`], [`ConnectionRecord`], [`DataTaskRecord`],
//!   [`TaskRunRecord`], [`SchemaSnapshot`] and the append-only [`AuditEvent`] log.
//! * [`MemoryStore`] and its model ([`Gateway`], [`Connection`], [`DataTask`], [`TaskRun`])
//!   are what the control plane uses until it moves to the durable store. Credentials there are
//!   [`SecretMap`]s, redacted in `Debug` and in every API view ([`ConnectionView`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidegate_metadata::Error> {
//! use tidegate_metadata::{MetadataStore, NewDataSpace, PageRequest, SqlStore};
//!
//! let store = SqlStore::open("sqlite::memory:").await?;
//! let tenant = store.create_tenant("acme").await?;
//! let space = store
//!     .create_space(&NewDataSpace {
//!         tenant_id: tenant.id.clone(),
//!         name: "finance".into(),
//!         description: "Ledgers and invoices".into(),
//!     })
//!     .await?;
//! let page = store.spaces(&tenant.id, &PageRequest::first(50)).await?;
//! assert_eq!(page.items, vec![space]);
//! # Ok(())
//! # }
//! # let _ = demo;
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod error;
mod memory;
mod model;
mod page;
mod records;
mod sql;
mod store;
mod validate;

// The public interface.
pub use error::Error;
pub use memory::MemoryStore;
pub use model::{Connection, ConnectionView, DataTask, Gateway, GatewayState, TableRun, TaskRun};
pub use page::{Cursor, MAX_PAGE_LIMIT, Page, PageRequest};
pub use records::{
    AuditEvent, AuditFilter, AuditOutcome, ConnectionRecord, DataKey, DataProduct, DataSpace,
    DataTaskRecord, GatewayRecord, GatewaySeen, HeldRoles, LoginSession, NewAuditEvent,
    NewConnection, NewDataKey, NewDataProduct, NewDataSpace, NewDataTask, NewGateway,
    NewLoginSession, NewSchemaSnapshot, NewUser, OidcIdentity, PasswordHash, RunReplication,
    SchemaSnapshot, SealedCredentials, SpaceRoleAssignment, SystemRoleAssignment, TaskRunRecord,
    TaskType, Tenant, TokenDigest, User,
};
pub use sql::{Backend, SCHEMA_VERSION, SqlStore, StoreOptions, WriteTx};
pub use store::MetadataStore;
pub use validate::validate_name;

// Crates in the public interface.
pub use sqlx;
pub use tidegate_proto::{
    MetricsReport, ReplicationPhase, SecretMap, SecretString, SlotReport, TableSelection,
    TableState, TaskState,
};
