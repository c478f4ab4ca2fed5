//! The durable model: what [`MetadataStore`](crate::MetadataStore) keeps.
//!
//! `New*` types are what a caller supplies; the store adds ids, times and versions. Records
//! whose names would clash with the in-memory model carry a `Record` suffix
//! ([`GatewayRecord`], [`ConnectionRecord`], [`DataTaskRecord`], [`TaskRunRecord`]).
//! Times are Unix milliseconds. `version` fields count changes and drive optimistic
//! concurrency: an update names the version it read and fails with
//! [`Error::Conflict`](crate::Error::Conflict) if another writer got there first.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tidegate_proto::{MetricsReport, ReplicationPhase, SlotReport, TableSelection, TaskState};

use crate::{Error, GatewayState, TableRun};

/// A tenant: the unit of isolation. Everything but the audit log belongs to one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Its id.
    pub id: String,
    /// Its name, unique across the store.
    pub name: String,
    /// When it was created.
    pub created_at_ms: i64,
}

/// A data product to create.
#[derive(Clone, Debug)]
pub struct NewDataProduct {
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// Its name, unique in the tenant.
    pub name: String,
    /// What it offers, for its consumers.
    pub description: String,
    /// The data tasks whose outputs it bundles (1 to 100).
    pub task_ids: Vec<String>,
    /// Who created it (a user id or an operator subject).
    pub created_by: String,
}

/// A data product: a named, described bundle of data tasks' outputs, offered to consumers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataProduct {
    /// Its id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// Its name, unique in the tenant.
    pub name: String,
    /// What it offers.
    pub description: String,
    /// The data tasks whose outputs it bundles.
    pub task_ids: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at_ms: i64,
}

/// A data space to create.
#[derive(Clone, Debug)]
pub struct NewDataSpace {
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// Its name, unique in the tenant.
    pub name: String,
    /// What it is for.
    pub description: String,
}

/// A data space: the connections, gateways and tasks of one team or domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataSpace {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its name, unique in the tenant.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its change counter.
    pub version: i64,
}

/// An argon2 password hash in PHC string form, opaque to the store. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string.
    pub fn new(phc: impl Into<String>) -> Self {
        Self(phc.into())
    }

    /// The PHC string, for verifying a password.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// An identity at an OpenID provider; a pair belongs to at most one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OidcIdentity {
    /// The provider's issuer URL.
    pub issuer: String,
    /// The subject (`sub`) at that issuer.
    pub subject: String,
}

/// A user to create.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// The tenant it belongs to.
    pub tenant_id: String,
    /// Its login name, unique in the tenant.
    pub username: String,
    /// Its display name.
    pub display_name: String,
    /// Its e-mail address.
    pub email: String,
    /// Its password hash, for local logins.
    pub password_hash: Option<PasswordHash>,
    /// Its OpenID identity, for single sign-on.
    pub oidc: Option<OidcIdentity>,
}

/// A user of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its login name, unique in the tenant.
    pub username: String,
    /// Its display name.
    pub display_name: String,
    /// Its e-mail address.
    pub email: String,
    /// Its password hash, for local logins.
    pub password_hash: Option<PasswordHash>,
    /// Its OpenID identity, for single sign-on.
    pub oidc: Option<OidcIdentity>,
    /// A disabled user cannot log in and its sessions are not valid.
    pub disabled: bool,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its change counter.
    pub version: i64,
}

/// A system role held by a user (`data_admin`, `data_space_creator`, ...).
///
/// Roles are stored as names; `tidegate-rbac` owns what they mean.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SystemRoleAssignment {
    /// The user.
    pub user_id: String,
    /// The role's name.
    pub role: String,
    /// When it was granted.
    pub granted_at_ms: i64,
}

/// The names of the roles one user holds, as one authorization decision needs them:
/// [`MetadataStore::held_roles`](crate::MetadataStore::held_roles).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldRoles {
    /// Its system roles.
    pub system: Vec<String>,
    /// Its roles in the data space asked about; none if none was.
    pub in_space: Vec<String>,
}

/// A role a user holds in one data space (`owner`, `can_view`, `can_operate`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpaceRoleAssignment {
    /// The assignment's id.
    pub id: String,
    /// The tenant of both the user and the space.
    pub tenant_id: String,
    /// The user.
    pub user_id: String,
    /// The data space.
    pub space_id: String,
    /// The role's name.
    pub role: String,
    /// When it was granted.
    pub granted_at_ms: i64,
}

/// A SHA-256 digest of a bearer token: sessions and enrollment tokens are stored and found
/// by it, so the store never holds a token. Redacted in `Debug`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// A digest computed elsewhere.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_slice(field: &'static str, bytes: &[u8]) -> Result<Self, Error> {
        let bytes = <[u8; 32]>::try_from(bytes).map_err(|_| Error::Invalid {
            field,
            reason: format!("stored digest has {} bytes, not 32", bytes.len()),
        })?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// A login session to create.
#[derive(Clone, Debug)]
pub struct NewLoginSession {
    /// Whose session.
    pub user_id: String,
    /// The digest of its bearer token.
    pub token: TokenDigest,
    /// When it stops being valid.
    pub expires_at_ms: i64,
}

/// A login session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginSession {
    /// Its id (not the token: it may be shown and logged).
    pub id: String,
    /// Whose session.
    pub user_id: String,
    /// The digest of its bearer token.
    pub token: TokenDigest,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it stops being valid.
    pub expires_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

impl LoginSession {
    /// Whether it is neither expired nor revoked at `now_ms`.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && now_ms < self.expires_at_ms
    }
}

/// A tenant data key to add, already wrapped by a key-encryption key.
#[derive(Clone, Debug)]
pub struct NewDataKey {
    /// Whose key.
    pub tenant_id: String,
    /// The id of the key-encryption key that wrapped it (in the KMS or key file).
    pub kek_id: String,
    /// The wrapped key. Opaque to the store.
    pub wrapped_key: Vec<u8>,
    /// Whether it becomes the tenant's active key (the previous one is deactivated).
    pub activate: bool,
}

/// A version of a tenant's data key, for envelope encryption. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey {
    /// Whose key.
    pub tenant_id: String,
    /// Its version, 1, 2, ... per tenant.
    pub version: i64,
    /// The key-encryption key that wraps it now.
    pub kek_id: String,
    /// The wrapped key.
    pub wrapped_key: Vec<u8>,
    /// Whether new secrets are sealed with it; at most one version per tenant is.
    pub active: bool,
    /// When it was added.
    pub created_at_ms: i64,
    /// When it was last rewrapped, if ever.
    pub rewrapped_at_ms: Option<i64>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("tenant_id", &self.tenant_id)
            .field("version", &self.version)
            .field("kek_id", &self.kek_id)
            .field(
                "wrapped_key",
                &format_args!("{} bytes", self.wrapped_key.len()),
            )
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// A gateway to create, in a data space.
#[derive(Clone, Debug)]
pub struct NewGateway {
    /// The data space it serves (its tenant follows from it).
    pub space_id: String,
    /// Its name, unique in the space.
    pub name: String,
    /// The digest of its one-time enrollment token.
    pub enrollment: Option<TokenDigest>,
    /// When the enrollment token expires.
    pub enrollment_expires_at_ms: Option<i64>,
}

/// A gateway as the store keeps it. Whether it is connected now is not stored: that belongs
/// to the control-plane instance holding its link; `last_seen_at_ms` is.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayRecord {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its data space.
    pub space_id: String,
    /// Its name, unique in the space.
    pub name: String,
    /// Where it stands.
    pub state: GatewayState,
    /// Its Ed25519 public identity key (base64url), once enrolled.
    pub public_key: Option<String>,
    /// Its software version, as it announced.
    pub software: Option<String>,
    /// The last metrics it reported.
    pub metrics: Option<MetricsReport>,
    /// When it was last heard from.
    pub last_seen_at_ms: Option<i64>,
    /// The digest of its unused enrollment token; cleared when used.
    pub enrollment: Option<TokenDigest>,
    /// When the enrollment token expires.
    pub enrollment_expires_at_ms: Option<i64>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its change counter (heartbeats do not count).
    pub version: i64,
}

/// A connection's credentials, sealed by the control plane under a tenant data key. The store
/// never sees plaintext. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredentials {
    /// The version of the tenant's data key that sealed them.
    pub data_key_version: i64,
    /// The sealed bytes.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedCredentials")
            .field("data_key_version", &self.data_key_version)
            .field(
                "ciphertext",
                &format_args!("{} bytes", self.ciphertext.len()),
            )
            .finish()
    }
}

/// A connection to create, in a data space.
#[derive(Clone, Debug)]
pub struct NewConnection {
    /// Its data space (its tenant follows from it).
    pub space_id: String,
    /// Its name, unique in the space.
    pub name: String,
    /// `sqlite`, `postgres`, `odbc`, `local`, `s3`, ...
    pub kind: String,
    /// Settings that are not secret.
    pub settings: BTreeMap<String, String>,
    /// Its sealed credentials, if it has any.
    pub credentials: Option<SealedCredentials>,
}

/// A connection as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its data space.
    pub space_id: String,
    /// Its name, unique in the space.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Settings that are not secret.
    pub settings: BTreeMap<String, String>,
    /// Its sealed credentials, if it has any.
    pub credentials: Option<SealedCredentials>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its change counter.
    pub version: i64,
}

/// What a data task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Copy every selected table once.
    FullLoad,
    /// Apply the source's changes to the target continuously.
    ChangeDataCapture,
    /// Keep the source's changes as change tables.
    StoreChanges,
}

impl TaskType {
    /// Its stored name: `full_load`, `change_data_capture` or `store_changes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullLoad => "full_load",
            Self::ChangeDataCapture => "change_data_capture",
            Self::StoreChanges => "store_changes",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "full_load" => Ok(Self::FullLoad),
            "change_data_capture" => Ok(Self::ChangeDataCapture),
            "store_changes" => Ok(Self::StoreChanges),
            _ => Err(Error::Invalid {
                field: "task_type",
                reason: "must be full_load, change_data_capture or store_changes".into(),
            }),
        }
    }
}

/// A data task to create, in a data space.
#[derive(Clone, Debug)]
pub struct NewDataTask {
    /// Its data space; the connections and the gateway must be of the same space.
    pub space_id: String,
    /// Its name, unique in the space.
    pub name: String,
    /// What it does.
    pub task_type: TaskType,
    /// Where it reads.
    pub source_connection_id: String,
    /// Where it writes.
    pub target_connection_id: String,
    /// The gateway that runs it.
    pub gateway_id: String,
    /// Which tables: include and exclude patterns.
    pub tables: TableSelection,
    /// When it runs by itself (a schedule expression, opaque to the store).
    pub schedule: Option<String>,
}

/// A data task as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DataTaskRecord {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its data space.
    pub space_id: String,
    /// Its name, unique in the space.
    pub name: String,
    /// What it does.
    pub task_type: TaskType,
    /// Where it reads.
    pub source_connection_id: String,
    /// Where it writes.
    pub target_connection_id: String,
    /// The gateway that runs it.
    pub gateway_id: String,
    /// Which tables.
    pub tables: TableSelection,
    /// When it runs by itself.
    pub schedule: Option<String>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its change counter.
    pub version: i64,
}

/// A gateway heard from, for [`MetadataStore::record_gateways_seen`](crate::MetadataStore::record_gateways_seen).
#[derive(Clone, Debug, PartialEq)]
pub struct GatewaySeen {
    /// The gateway.
    pub id: String,
    /// When it was last heard from.
    pub seen_at_ms: i64,
    /// Its latest metrics, if it sent some since the last record.
    pub metrics: Option<MetricsReport>,
}

/// One run of a data task as the store keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRunRecord {
    /// Its id.
    pub id: String,
    /// Its task.
    pub task_id: String,
    /// Where it stands.
    pub state: TaskState,
    /// Per-table state and metrics, by `schema.table`.
    pub tables: BTreeMap<String, TableRun>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    pub started_at_ms: i64,
    /// When it reached a final state (completed, stopped, failed).
    pub ended_at_ms: Option<i64>,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Its change counter.
    pub version: i64,
    /// For change data capture: where the run stands.
    pub replication: Option<RunReplication>,
}

/// Where a change data capture run stands: as its gateway last reported it while it ran, and
/// its replication slot as last inspected while it did not. Positions and counts only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RunReplication {
    /// What the run was doing at the last report.
    pub phase: Option<ReplicationPhase>,
    /// The position the target holds (its checkpoint), as PostgreSQL shows LSNs.
    pub checkpoint_lsn: Option<String>,
    /// The source's WAL position at the last report.
    pub source_lsn: Option<String>,
    /// WAL bytes between the checkpoint and the source's position.
    pub lag_bytes: u64,
    /// How long the oldest transaction not yet durable at the target had been committed at
    /// the source, in milliseconds.
    pub lag_ms: u64,
    /// Rows of the initial load, once it completed in this run.
    pub load_rows: u64,
    /// Source transactions made durable at the target by this run.
    pub transactions: u64,
    /// Change rows made durable at the target by this run.
    pub rows: u64,
    /// When the gateway last reported.
    pub reported_at_ms: Option<i64>,
    /// The replication slot as last inspected while the task was not running.
    pub slot: Option<SlotReport>,
    /// When the slot was last inspected.
    pub slot_checked_at_ms: Option<i64>,
    /// Why the slot needs attention: it retains more WAL than the configured limit, or it
    /// is gone.
    pub warning: Option<String>,
    /// Tables set apart after they failed: their changes are not applied until they are
    /// resynced (`POST /api/v1/tasks/{id}/resync`).
    pub failed_tables: Vec<tidegate_proto::FailedTable>,
}

/// A table's schema as a run saw it, to add.
#[derive(Clone, Debug)]
pub struct NewSchemaSnapshot {
    /// The task.
    pub task_id: String,
    /// The run, of that task.
    pub run_id: String,
    /// `schema.table`.
    pub table: String,
    /// The schema: column names and types, never values.
    pub schema: serde_json::Value,
}

/// A table's schema as a run saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SchemaSnapshot {
    /// Its id.
    pub id: String,
    /// The task.
    pub task_id: String,
    /// The run.
    pub run_id: String,
    /// `schema.table`.
    pub table: String,
    /// The schema.
    pub schema: serde_json::Value,
    /// When it was taken.
    pub taken_at_ms: i64,
}

/// How an audited action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// It was allowed and done.
    Success,
    /// Authorization refused it.
    Denied,
    /// It was allowed and failed.
    Failure,
}

impl AuditOutcome {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }

    pub(crate) fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "success" => Ok(Self::Success),
            "denied" => Ok(Self::Denied),
            "failure" => Ok(Self::Failure),
            _ => Err(Error::Invalid {
                field: "outcome",
                reason: "must be success, denied or failure".into(),
            }),
        }
    }
}

/// An audit event to append.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewAuditEvent {
    /// When it happened.
    pub at_ms: i64,
    /// The tenant it happened in.
    pub tenant_id: String,
    /// The data space, if the action was in one.
    pub space_id: Option<String>,
    /// Who: a user id, a gateway id or `system`.
    pub actor: String,
    /// What, e.g. `connection.create`, `session.login`.
    pub action: String,
    /// The kind of object acted on.
    pub target_kind: String,
    /// The object acted on.
    pub target_id: Option<String>,
    /// Where the request came from (an IP address).
    pub source_addr: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// More, as JSON: names and reasons, never secrets.
    pub detail: serde_json::Value,
}

/// An event in the append-only audit log: what was appended, and the id it got.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// Its id.
    pub id: String,
    /// The event.
    #[serde(flatten)]
    pub event: NewAuditEvent,
}

/// Which audit events to return. Every field but the tenant is optional.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// The tenant.
    pub tenant_id: String,
    /// Only events in this data space.
    pub space_id: Option<String>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only events of this action.
    pub action: Option<String>,
    /// Only events at or after this time.
    pub from_ms: Option<i64>,
    /// Only events before this time.
    pub until_ms: Option<i64>,
}

impl AuditFilter {
    /// Every event of a tenant.
    pub fn tenant(tenant_id: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            ..Self::default()
        }
    }
}
