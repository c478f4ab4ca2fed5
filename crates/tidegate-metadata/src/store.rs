//! [`MetadataStore`]: the operations of the durable metadata store.

use std::collections::BTreeMap;
use std::future::Future;

use tidegate_proto::TaskState;

use crate::{
    AuditEvent, AuditFilter, ConnectionRecord, DataKey, DataSpace, DataTaskRecord, Error,
    GatewayRecord, GatewaySeen, HeldRoles, LoginSession, NewAuditEvent, NewConnection, NewDataKey,
    NewDataSpace, NewDataTask, NewGateway, NewLoginSession, NewSchemaSnapshot, NewUser,
    OidcIdentity, Page, PageRequest, RunReplication, SchemaSnapshot, SpaceRoleAssignment,
    SystemRoleAssignment, TableRun, TaskRunRecord, Tenant, TokenDigest, User,
};
use crate::{DataProduct, NewDataProduct};

/// The durable metadata of the control plane.
///
/// # Contract
///
/// * **Durability:** an operation that returned `Ok` is committed. Every operation is atomic
///   (one statement or one transaction): a failed call changes nothing.
/// * **Cancellation:** dropping a returned future is safe: an open transaction rolls back.
///   A write dropped while its commit was in flight has either happened entirely or not at
///   all; read before doing it again.
/// * **Concurrency:** several control planes may share one database (PostgreSQL). Updates of
///   objects with a `version` are compare-and-swap on that version; run state changes are
///   compare-and-swap on the state; uniqueness (names, one active data key per tenant, one
///   active run per task) is enforced by the database. Losing a race is
///   [`Error::Conflict`]: read again and decide (a conflict is not
///   [`Error::is_retryable`]).
/// * **Pagination:** lists that can grow take a [`PageRequest`] and return a [`Page`] in a
///   stable order (creation time, then id), keyset-paginated.
/// * **Deletion:** deleting an object that others still use is refused with
///   [`Error::Conflict`] (a tenant with spaces, users or keys; a space with gateways,
///   connections or tasks; a connection or gateway used by a task; a task with a starting or
///   running run). What belongs only to the deleted object goes with it: a user's roles and
///   sessions, a space's role assignments, a task's runs and schema snapshots.
/// * **Audit:** the audit log can only be appended to and read; the database itself rejects
///   `UPDATE` and `DELETE` on it.
/// * **Secrets:** the store holds token digests, password hashes, wrapped keys and sealed
///   credentials, never plaintext; errors never quote them.
///
/// Not dyn-compatible: the methods return `impl Future + Send`. There is one implementation,
/// [`SqlStore`](crate::SqlStore), serving SQLite and PostgreSQL; callers hold it directly or
/// are generic over `S: MetadataStore` (a test double can implement the trait).
pub trait MetadataStore: Send + Sync {
    // --- Tenants ------------------------------------------------------------------------

    /// Creates a tenant; its name is unique.
    fn create_tenant(&self, name: &str) -> impl Future<Output = Result<Tenant, Error>> + Send;
    /// A tenant by id.
    fn tenant(&self, id: &str) -> impl Future<Output = Result<Tenant, Error>> + Send;
    /// Tenants, oldest first.
    fn tenants(
        &self,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Tenant>, Error>> + Send;
    /// Deletes a tenant that has no data spaces, users or data keys left.
    fn delete_tenant(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Creates a data product: a named bundle of data tasks' outputs.
    fn create_data_product(
        &self,
        new: &NewDataProduct,
    ) -> impl Future<Output = Result<DataProduct, Error>> + Send;
    /// The tenant's data products, oldest first.
    fn data_products(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<DataProduct>, Error>> + Send;
    /// A setting of the tenant, if it was ever set.
    fn tenant_setting(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, Error>> + Send;
    /// The setting of the tenant, set to `value` first if it was never set: of several callers
    /// racing (control planes sharing a database), all get the value the first one stored.
    fn init_tenant_setting(
        &self,
        tenant_id: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> impl Future<Output = Result<serde_json::Value, Error>> + Send;
    /// Sets a setting of the tenant, replacing its value.
    fn set_tenant_setting(
        &self,
        tenant_id: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    // --- Data spaces --------------------------------------------------------------------

    /// Creates a data space; its name is unique in the tenant.
    fn create_space(
        &self,
        new: &NewDataSpace,
    ) -> impl Future<Output = Result<DataSpace, Error>> + Send;
    /// A data space by id.
    fn space(&self, id: &str) -> impl Future<Output = Result<DataSpace, Error>> + Send;
    /// A tenant's data spaces, oldest first.
    fn spaces(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<DataSpace>, Error>> + Send;
    /// Writes a space's name and description if its version is still `space.version`.
    fn update_space(
        &self,
        space: &DataSpace,
    ) -> impl Future<Output = Result<DataSpace, Error>> + Send;
    /// Deletes a space without gateways, connections or tasks, with its role assignments.
    fn delete_space(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;

    // --- Users and roles ----------------------------------------------------------------

    /// Creates a user; the username is unique in the tenant, the OIDC identity everywhere.
    fn create_user(&self, new: &NewUser) -> impl Future<Output = Result<User, Error>> + Send;
    /// A user by id.
    fn user(&self, id: &str) -> impl Future<Output = Result<User, Error>> + Send;
    /// A user by tenant and username.
    fn user_by_username(
        &self,
        tenant_id: &str,
        username: &str,
    ) -> impl Future<Output = Result<User, Error>> + Send;
    /// The user with this OIDC identity.
    fn user_by_oidc(
        &self,
        identity: &OidcIdentity,
    ) -> impl Future<Output = Result<User, Error>> + Send;
    /// A tenant's users, oldest first.
    fn users(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<User>, Error>> + Send;
    /// Writes a user's username, display name, e-mail, password hash, OIDC identity and
    /// disabled flag if its version is still `user.version`.
    fn update_user(&self, user: &User) -> impl Future<Output = Result<User, Error>> + Send;
    /// Deletes a user with its roles and sessions.
    fn delete_user(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Grants a system role; granting one the user holds is a conflict.
    fn grant_system_role(
        &self,
        user_id: &str,
        role: &str,
    ) -> impl Future<Output = Result<SystemRoleAssignment, Error>> + Send;
    /// Revokes a system role; whether the user held it.
    fn revoke_system_role(
        &self,
        user_id: &str,
        role: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// A user's system roles (bounded by the role catalogue), by name.
    fn system_roles(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<SystemRoleAssignment>, Error>> + Send;
    /// Grants a role in a data space of the user's tenant; granting one the user holds there
    /// is a conflict.
    fn grant_space_role(
        &self,
        user_id: &str,
        space_id: &str,
        role: &str,
    ) -> impl Future<Output = Result<SpaceRoleAssignment, Error>> + Send;
    /// Revokes a role in a data space; whether the user held it.
    fn revoke_space_role(
        &self,
        user_id: &str,
        space_id: &str,
        role: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// The roles a user holds in data spaces, oldest grant first.
    fn space_roles_of_user(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<SpaceRoleAssignment>, Error>> + Send;
    /// The names of the roles a user holds system-wide and, if `space_id` is given, in that
    /// data space: what one authorization decision needs, in one read.
    fn held_roles(
        &self,
        user_id: &str,
        space_id: Option<&str>,
    ) -> impl Future<Output = Result<HeldRoles, Error>> + Send;
    /// The role assignments in a data space, oldest grant first.
    fn space_members(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<SpaceRoleAssignment>, Error>> + Send;

    // --- Login sessions -----------------------------------------------------------------

    /// Records a login session by the digest of its bearer token.
    fn create_session(
        &self,
        new: &NewLoginSession,
    ) -> impl Future<Output = Result<LoginSession, Error>> + Send;
    /// A session by id, whatever its state.
    fn session(&self, id: &str) -> impl Future<Output = Result<LoginSession, Error>> + Send;
    /// The session a bearer token opens at `now_ms`: not expired, not revoked, of a user who
    /// is not disabled. Anything else is [`Error::NotFound`] (which does not say why).
    fn valid_session(
        &self,
        token: &TokenDigest,
        now_ms: i64,
    ) -> impl Future<Output = Result<LoginSession, Error>> + Send;
    /// [`valid_session`](Self::valid_session) with its user, in one read.
    fn valid_session_user(
        &self,
        token: &TokenDigest,
        now_ms: i64,
    ) -> impl Future<Output = Result<(LoginSession, User), Error>> + Send;
    /// Revokes a session (again is harmless).
    fn revoke_session(
        &self,
        id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Revokes every unrevoked session of a user; how many.
    fn revoke_user_sessions(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
    /// A user's sessions, oldest first, whatever their state.
    fn sessions_of_user(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<LoginSession>, Error>> + Send;
    /// Deletes sessions that expired before `now_ms`; how many.
    fn purge_expired_sessions(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    // --- Tenant data keys ---------------------------------------------------------------

    /// Adds the next version of a tenant's data key, active if asked (deactivating the
    /// previous active version in the same transaction).
    fn add_data_key(&self, new: &NewDataKey)
    -> impl Future<Output = Result<DataKey, Error>> + Send;
    /// One version of a tenant's data key.
    fn data_key(
        &self,
        tenant_id: &str,
        version: i64,
    ) -> impl Future<Output = Result<DataKey, Error>> + Send;
    /// The tenant's active data key.
    fn active_data_key(
        &self,
        tenant_id: &str,
    ) -> impl Future<Output = Result<DataKey, Error>> + Send;
    /// A tenant's data keys, by version.
    fn data_keys(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<DataKey>, Error>> + Send;
    /// Makes a version the tenant's one active key.
    fn activate_data_key(
        &self,
        tenant_id: &str,
        version: i64,
    ) -> impl Future<Output = Result<DataKey, Error>> + Send;
    /// Replaces the wrapped bytes and key-encryption-key id of one version in one statement,
    /// if it is still wrapped by `expected_kek_id` (so two rewraps cannot interleave).
    fn rewrap_data_key(
        &self,
        tenant_id: &str,
        version: i64,
        expected_kek_id: &str,
        new_kek_id: &str,
        new_wrapped_key: &[u8],
    ) -> impl Future<Output = Result<DataKey, Error>> + Send;

    // --- Gateways -----------------------------------------------------------------------

    /// Creates a gateway, pending enrollment, in a data space.
    fn create_gateway(
        &self,
        new: &NewGateway,
    ) -> impl Future<Output = Result<GatewayRecord, Error>> + Send;
    /// A gateway by id.
    fn gateway(&self, id: &str) -> impl Future<Output = Result<GatewayRecord, Error>> + Send;
    /// The gateway whose unused enrollment token has this digest.
    fn gateway_by_enrollment(
        &self,
        digest: &TokenDigest,
    ) -> impl Future<Output = Result<GatewayRecord, Error>> + Send;
    /// A data space's gateways, oldest first.
    fn gateways(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<GatewayRecord>, Error>> + Send;
    /// Writes a gateway's name, state, public key, software, enrollment fields if its version
    /// is still `gateway.version`.
    fn update_gateway(
        &self,
        gateway: &GatewayRecord,
    ) -> impl Future<Output = Result<GatewayRecord, Error>> + Send;
    /// Records a heartbeat: last seen and metrics, without a version change.
    fn record_gateway_seen(
        &self,
        id: &str,
        seen_at_ms: i64,
        metrics: Option<&tidegate_proto::MetricsReport>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Records many heartbeats in one transaction; gateways that no longer exist are skipped.
    fn record_gateways_seen(
        &self,
        seen: &[GatewaySeen],
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Deletes a gateway no task uses.
    fn delete_gateway(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;

    // --- Connections --------------------------------------------------------------------

    /// Creates a connection in a data space.
    fn create_connection(
        &self,
        new: &NewConnection,
    ) -> impl Future<Output = Result<ConnectionRecord, Error>> + Send;
    /// A connection by id, with its sealed credentials.
    fn connection(&self, id: &str) -> impl Future<Output = Result<ConnectionRecord, Error>> + Send;
    /// A data space's connections, oldest first.
    fn connections(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<ConnectionRecord>, Error>> + Send;
    /// Writes a connection's name, kind, settings and credentials if its version is still
    /// `connection.version`.
    fn update_connection(
        &self,
        connection: &ConnectionRecord,
    ) -> impl Future<Output = Result<ConnectionRecord, Error>> + Send;
    /// Deletes a connection no task uses.
    fn delete_connection(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;

    // --- Data tasks, runs, schema snapshots ---------------------------------------------

    /// Creates a data task; its connections and gateway must be of its data space.
    fn create_task(
        &self,
        new: &NewDataTask,
    ) -> impl Future<Output = Result<DataTaskRecord, Error>> + Send;
    /// A data task by id.
    fn task(&self, id: &str) -> impl Future<Output = Result<DataTaskRecord, Error>> + Send;
    /// A data space's tasks, oldest first.
    fn tasks(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<DataTaskRecord>, Error>> + Send;
    /// Writes a task's name, type, connections, gateway, tables and schedule if its version is
    /// still `task.version`.
    fn update_task(
        &self,
        task: &DataTaskRecord,
    ) -> impl Future<Output = Result<DataTaskRecord, Error>> + Send;
    /// Deletes a task without a starting or running run, with its runs and snapshots.
    fn delete_task(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// Starts a run (state `Starting`); a conflict if the task has a starting or running run.
    fn create_run(
        &self,
        task_id: &str,
    ) -> impl Future<Output = Result<TaskRunRecord, Error>> + Send;
    /// A run by id.
    fn run(&self, id: &str) -> impl Future<Output = Result<TaskRunRecord, Error>> + Send;
    /// A task's runs, oldest first.
    fn runs(
        &self,
        task_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<TaskRunRecord>, Error>> + Send;
    /// Moves a run from state `from` to `to` if it is still in `from` (compare-and-swap: of
    /// two control planes, one wins and the other gets a conflict). A final state sets the
    /// end time; `Starting` or `Running` clears it (a resume). `error` replaces the error.
    fn transition_run(
        &self,
        id: &str,
        from: TaskState,
        to: TaskState,
        error: Option<&str>,
    ) -> impl Future<Output = Result<TaskRunRecord, Error>> + Send;
    /// Replaces a run's per-table state and metrics.
    fn record_run_tables(
        &self,
        id: &str,
        tables: &BTreeMap<String, TableRun>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// The starting and running runs of the tasks assigned to a gateway, oldest first.
    fn active_runs_on_gateway(
        &self,
        gateway_id: &str,
    ) -> impl Future<Output = Result<Vec<TaskRunRecord>, Error>> + Send;
    /// The latest run of each change data capture and store changes task of the tenant, if
    /// that run is stopped or failed: tasks whose replication slot is kept at the source
    /// while nothing reads from it. At most 10,000, oldest first.
    fn idle_capture_runs(
        &self,
        tenant_id: &str,
    ) -> impl Future<Output = Result<Vec<TaskRunRecord>, Error>> + Send;
    /// Replaces where a change data capture run stands.
    fn record_run_replication(
        &self,
        id: &str,
        replication: &RunReplication,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Keeps a table's schema as a run of its task saw it.
    fn add_schema_snapshot(
        &self,
        new: &NewSchemaSnapshot,
    ) -> impl Future<Output = Result<SchemaSnapshot, Error>> + Send;
    /// A task's schema snapshots, oldest first.
    fn schema_snapshots(
        &self,
        task_id: &str,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<SchemaSnapshot>, Error>> + Send;
    /// The newest snapshot of one table of a task.
    fn latest_schema_snapshot(
        &self,
        task_id: &str,
        table: &str,
    ) -> impl Future<Output = Result<SchemaSnapshot, Error>> + Send;

    // --- Audit log ----------------------------------------------------------------------

    /// Appends an event to the audit log.
    fn append_audit(
        &self,
        event: &NewAuditEvent,
    ) -> impl Future<Output = Result<AuditEvent, Error>> + Send;
    /// Audit events matching a filter, oldest first.
    fn audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<AuditEvent>, Error>> + Send;
    /// Writes every event matching a filter, oldest first, as JSON Lines (one
    /// [`AuditEvent`] object a line); how many. Reads page by page, so memory stays bounded.
    fn export_audit(
        &self,
        filter: &AuditFilter,
        out: &mut (dyn std::io::Write + Send),
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}
