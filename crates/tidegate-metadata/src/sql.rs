//! [`SqlStore`]: the [`MetadataStore`] on SQLite or PostgreSQL, through sqlx.
//!
//! Why the `Any` driver, and what keeps both databases identical: see [`SqlStore`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::error::ErrorKind;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, SqlStr};
use tidegate_proto::{MetricsReport, TableSelection, TaskState};

use crate::validate::{check_bytes, check_len, check_name, check_text};
use crate::{
    AuditEvent, AuditFilter, AuditOutcome, ConnectionRecord, Cursor, DataKey, DataProduct,
    DataSpace, DataTaskRecord, Error, GatewayRecord, GatewaySeen, GatewayState, HeldRoles,
    LoginSession, MetadataStore, NewAuditEvent, NewConnection, NewDataKey, NewDataProduct,
    NewDataSpace, NewDataTask, NewGateway, NewLoginSession, NewSchemaSnapshot, NewUser,
    OidcIdentity, Page, PageRequest, PasswordHash, RunReplication, SchemaSnapshot,
    SealedCredentials, SpaceRoleAssignment, SystemRoleAssignment, TableRun, TaskRunRecord,
    TaskType, Tenant, TokenDigest, User,
};

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: i64 = 4;

/// The migrations: version, description, SQLite script, PostgreSQL script.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "metadata",
        include_str!("../migrations/sqlite/0001_metadata.sql"),
        include_str!("../migrations/postgres/0001_metadata.sql"),
    ),
    (
        2,
        "tenant settings",
        include_str!("../migrations/sqlite/0002_tenant_settings.sql"),
        include_str!("../migrations/postgres/0002_tenant_settings.sql"),
    ),
    (
        3,
        "data products",
        include_str!("../migrations/sqlite/0003_data_products.sql"),
        include_str!("../migrations/postgres/0003_data_products.sql"),
    ),
    (
        4,
        "run replication",
        include_str!("../migrations/sqlite/0004_run_replication.sql"),
        include_str!("../migrations/postgres/0004_run_replication.sql"),
    ),
];

type Query = sqlx::query::Query<'static, Any, AnyArguments>;

/// The database behind a [`SqlStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite: one file (WAL mode, foreign keys on), or memory for tests.
    Sqlite,
    /// PostgreSQL: one database several control planes can share.
    Postgres,
}

impl Backend {
    fn of_url(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(Error::Invalid {
                field: "url",
                reason: "must start with sqlite:, postgres:// or postgresql://".into(),
            })
        }
    }
}

/// How to open a [`SqlStore`]. `Debug` does not show the URL (it may hold a password).
#[derive(Clone)]
pub struct StoreOptions {
    url: String,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl StoreOptions {
    /// Options for a database URL: `sqlite://path/to/file.db?mode=rwc`, `sqlite::memory:`,
    /// or `postgres://user:password@host:port/database` (add `?sslmode=verify-full` for TLS).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// Options for a SQLite file, created if missing.
    pub fn sqlite_file(path: &Path) -> Self {
        let mut url = String::from("sqlite://");
        for byte in path.to_string_lossy().bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
                url.push(char::from(byte));
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
        url.push_str("?mode=rwc");
        Self::new(url)
    }

    /// The most connections the pool opens (default 8; always 1 for SQLite in memory).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long an operation waits for a free connection (default 30 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("backend", &Backend::of_url(&self.url).ok())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

/// The durable [`MetadataStore`] on SQLite or PostgreSQL. Cheap to clone (a pool handle).
/// `Debug` shows the backend and pool size, never connection options.
///
/// Open it with [`SqlStore::open`] (`sqlite://path/meta.db?mode=rwc`, `sqlite::memory:`,
/// `postgres://user:password@host/db`) or [`SqlStore::open_with`] and [`StoreOptions`]; the
/// schema migrates to [`SCHEMA_VERSION`] on open.
///
/// # One code path, two databases
///
/// The store uses sqlx's `Any` driver: one pool type, one set of queries, one row decoder, and
/// the backend chosen by the URL at run time. An enum over a `SqlitePool` and a `PgPool` would
/// have needed every query and decoder written twice (or hidden behind a macro) for no gain:
/// the schema is written for what both databases share.
///
/// * Placeholders are `$1`, `$2`, ... which SQLite accepts too. Everything is a bound
///   parameter; no value is ever formatted into SQL.
/// * Column types are the common ground: `TEXT` ids and names, `BIGINT` Unix milliseconds and
///   versions, `BLOB`/`BYTEA` for digests and sealed bytes, JSON as `TEXT`. Booleans are
///   `BOOLEAN` on PostgreSQL and `INTEGER` 0/1 on SQLite (the `Any` driver cannot read SQLite's
///   `BOOLEAN`); the store reads both.
/// * `INSERT ... SELECT ... FROM parent WHERE id = $n RETURNING ...` creates a child and
///   checks its parent in one statement; `UPDATE ... WHERE version = $n RETURNING ...` is the
///   compare-and-swap of optimistic concurrency. Both databases support `RETURNING`.
/// * Migrations are the SQL files under `migrations/sqlite` and `migrations/postgres`, compiled
///   into the binary, run by sqlx's migrator when the store opens (under an advisory lock on
///   PostgreSQL, so control planes starting together migrate once).
///
/// * SQLite connections run in WAL mode with foreign keys on and a 5 s busy timeout: readers
///   never wait, writers take turns. SQLite lets one connection write at a time, and a writer
///   that finds the lock taken sleep-polls for it (1, 2, 5, 10 ms and longer), holding its
///   pooled connection meanwhile; so every write of a store on a SQLite file goes through one
///   connection of its own, for which writers queue in order, and the busy timeout only
///   matters for other processes writing to the file. A transaction that writes does so first,
///   so it holds the write lock before it reads.
/// * Optional filters are `($n IS NULL OR column = $n)` in static SQL, and the keyset is
///   `(key, id) > ($k, $i)`; every list has an index on its filter and sort key.
///
/// The `Any` driver needs its drivers installed process-wide; [`SqlStore::open`] installs the
/// SQLite and PostgreSQL drivers unless the application installed a set first (then that set
/// must include the backend of the URL).
#[derive(Clone)]
pub struct SqlStore {
    /// Reads, and on PostgreSQL writes too.
    pool: AnyPool,
    /// Writes: on a SQLite file, a pool of one connection of its own; otherwise `pool`.
    writer: AnyPool,
    backend: Backend,
}

impl fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Opens the database at `url` and migrates it to [`SCHEMA_VERSION`].
    pub async fn open(url: &str) -> Result<Self, Error> {
        Self::open_with(&StoreOptions::new(url)).await
    }

    /// Opens a database and migrates it to [`SCHEMA_VERSION`].
    pub async fn open_with(options: &StoreOptions) -> Result<Self, Error> {
        // Fails only if the application installed its own set first; that set is then used.
        let _ =
            sqlx::any::install_drivers(&[sqlx::sqlite::any::DRIVER, sqlx::postgres::any::DRIVER]);
        let backend = Backend::of_url(&options.url)?;
        let in_memory = backend == Backend::Sqlite
            && (options.url.contains(":memory:") || options.url.contains("mode=memory"));
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout);
        if in_memory {
            // Every connection to `sqlite::memory:` is its own database: keep exactly one.
            pool_options = pool_options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        if backend == Backend::Sqlite {
            pool_options = pool_options.after_connect(move |conn, _| {
                Box::pin(async move {
                    if !in_memory {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let connect = |pool: AnyPoolOptions| async move {
            pool.connect(&options.url)
                .await
                .map_err(|source| Error::Database {
                    operation: "connecting to the metadata database",
                    source,
                })
        };
        let pool = connect(pool_options.clone()).await?;
        // A SQLite file has a connection of its own for writes (see the type's docs).
        let writer = if backend == Backend::Sqlite && !in_memory {
            connect(pool_options.max_connections(1)).await?
        } else {
            pool.clone()
        };
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, sqlite, postgres)| {
                let sql = match backend {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => postgres,
                };
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect::<Vec<_>>();
        let migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        };
        migrator.run(&writer).await.map_err(|e| Error::Database {
            operation: "migrating the metadata database",
            source: e.into(),
        })?;
        Ok(Self {
            pool,
            writer,
            backend,
        })
    }

    /// The database behind the store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64, Error> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = $1")
                .bind(true)
                .fetch_one(&self.pool)
                .await
                .map_err(db("reading the schema version"))?;
        Ok(version.unwrap_or(0))
    }

    /// The connection pool, for maintenance tools and tests. Statements run on it bypass the
    /// store's checks (but not the database's: foreign keys, uniqueness, the audit triggers).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection; later operations fail.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Reads one row, if any.
    async fn one<T>(
        &self,
        operation: &'static str,
        query: Query,
        decode: fn(&AnyRow) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        fetch_row(&self.pool, operation, query, decode).await
    }

    /// Writes, returning one row if the statement did.
    async fn write_one<T>(
        &self,
        operation: &'static str,
        query: Query,
        decode: fn(&AnyRow) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        fetch_row(&self.writer, operation, query, decode).await
    }

    /// Writes; how many rows the statement changed.
    async fn affected(&self, operation: &'static str, query: Query) -> Result<u64, Error> {
        rows_affected(&self.writer, operation, query).await
    }

    /// One page: `query` has its filter parameters bound and takes three more, in order: the
    /// cursor's key, the cursor's id (both NULL on the first page) and the row limit.
    async fn page<T>(
        &self,
        operation: &'static str,
        query: Query,
        page: &PageRequest,
        decode: fn(&AnyRow) -> Result<T, Error>,
        key: fn(&T) -> (i64, &str),
    ) -> Result<Page<T>, Error> {
        let (limit, after) = page.resolve()?;
        let (after_key, after_id) = after.map_or((None, None), |(k, id)| (Some(k), Some(id)));
        let rows = query
            .bind(after_key)
            .bind(after_id)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(db(operation))?;
        let mut items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let mut next = None;
        // `limit` is 1 to MAX_PAGE_LIMIT, so it fits a usize.
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if items.len() > limit {
            items.truncate(limit);
            next = items.last().map(|item| {
                let (k, id) = key(item);
                Cursor::encode(k, id)
            });
        }
        Ok(Page { items, next })
    }

    /// The row an optimistic update returned: see [`updated`].
    async fn updated<T>(
        &self,
        kind: &'static str,
        exists: &'static str,
        id: &str,
        row: Option<T>,
    ) -> Result<T, Error> {
        updated(&self.pool, kind, exists, id, row).await
    }

    /// Deletes one row by id: see [`delete_by_id`].
    async fn delete(
        &self,
        sql: &'static str,
        kind: &'static str,
        id: &str,
        in_use_by: &str,
    ) -> Result<(), Error> {
        delete_by_id(&self.writer, sql, kind, id, in_use_by).await
    }

    /// A connection to write on: on a SQLite file the store's one writer, waited for in turn.
    async fn write_connection(&self) -> Result<PoolConnection<Any>, Error> {
        self.writer
            .acquire()
            .await
            .map_err(db("waiting for a connection to write on"))
    }

    /// Begins a transaction of writes that commit together, such as a change and the audit
    /// event that records it: see [`WriteTx`].
    ///
    /// On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so it waits for other
    /// writers here rather than half-way. Other writers wait for it in turn: do nothing slow
    /// between this and [`WriteTx::commit`], and never wait for another write of the same
    /// store meanwhile (on SQLite the transaction holds the one connection that writes; in
    /// memory, the one connection there is).
    pub async fn begin_write(&self) -> Result<WriteTx, Error> {
        let op = "beginning a transaction";
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
        .map_err(db(op))?;
        Ok(WriteTx { tx })
    }
}

// --- Column lists, shared by SELECT and RETURNING -----------------------------------------

macro_rules! tenant_cols {
    () => {
        "id, name, created_at_ms"
    };
}
macro_rules! product_cols {
    () => {
        "id, tenant_id, name, description, task_ids, created_by, created_at_ms"
    };
}
macro_rules! space_cols {
    () => {
        "id, tenant_id, name, description, created_at_ms, updated_at_ms, version"
    };
}
macro_rules! user_cols {
    () => {
        "id, tenant_id, username, display_name, email, password_hash, oidc_issuer, \
         oidc_subject, disabled, created_at_ms, updated_at_ms, version"
    };
}
macro_rules! space_role_cols {
    () => {
        "id, tenant_id, user_id, space_id, role, granted_at_ms"
    };
}
macro_rules! session_cols {
    () => {
        "id, user_id, token_sha256, created_at_ms, expires_at_ms, revoked_at_ms"
    };
}
macro_rules! key_cols {
    () => {
        "tenant_id, version, kek_id, wrapped_key, active, created_at_ms, rewrapped_at_ms"
    };
}
macro_rules! gateway_cols {
    () => {
        "id, tenant_id, space_id, name, state, state_reason, public_key, software, metrics, \
         last_seen_at_ms, enrollment_sha256, enrollment_expires_at_ms, created_at_ms, \
         updated_at_ms, version"
    };
}
macro_rules! connection_cols {
    () => {
        "id, tenant_id, space_id, name, kind, settings, sealed_credentials, data_key_version, \
         created_at_ms, updated_at_ms, version"
    };
}
macro_rules! task_cols {
    () => {
        "id, tenant_id, space_id, name, task_type, source_connection_id, \
         target_connection_id, gateway_id, include_tables, exclude_tables, schedule, \
         created_at_ms, updated_at_ms, version"
    };
}
macro_rules! run_cols {
    () => {
        "id, task_id, state, tables, error, started_at_ms, ended_at_ms, updated_at_ms, version, \
         replication"
    };
}
macro_rules! snapshot_cols {
    () => {
        "id, task_id, run_id, table_name, schema_json, taken_at_ms"
    };
}
macro_rules! audit_cols {
    () => {
        "id, at_ms, tenant_id, space_id, actor, action, target_kind, target_id, source_addr, \
         outcome, detail"
    };
}

/// The keyset condition and order of a list sorted by `$key` then `id`; `$p` is the number of
/// the cursor's first parameter.
macro_rules! keyset {
    ($key:literal, $p:literal, $q:literal, $l:literal) => {
        concat!(
            " AND ($",
            $p,
            " IS NULL OR (",
            $key,
            ", id) > ($",
            $p,
            ", $",
            $q,
            "))",
            " ORDER BY ",
            $key,
            ", id LIMIT $",
            $l
        )
    };
}

// --- Statements on a pool, a connection or a transaction ----------------------------------

/// The row `query` returns, if any, decoded.
async fn fetch_row<'e, T>(
    exec: impl Executor<'e, Database = Any>,
    operation: &'static str,
    query: Query,
    decode: fn(&AnyRow) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    query
        .fetch_optional(exec)
        .await
        .map_err(db(operation))?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Like [`fetch_row`], but a foreign-key refusal is `on_foreign_key()`.
async fn fetch_row_or<'e, T>(
    exec: impl Executor<'e, Database = Any>,
    operation: &'static str,
    query: Query,
    decode: fn(&AnyRow) -> Result<T, Error>,
    on_foreign_key: fn() -> Error,
) -> Result<Option<T>, Error> {
    match query.fetch_optional(exec).await {
        Ok(row) => row.as_ref().map(decode).transpose(),
        Err(e) if is_foreign_key(&e) => Err(on_foreign_key()),
        Err(e) => Err(map_db_error(operation, e)),
    }
}

/// Runs `query`; how many rows it changed.
async fn rows_affected<'e>(
    exec: impl Executor<'e, Database = Any>,
    operation: &'static str,
    query: Query,
) -> Result<u64, Error> {
    Ok(query
        .execute(exec)
        .await
        .map_err(db(operation))?
        .rows_affected())
}

/// The row an optimistic update returned. None means the object is gone (`exists`, a query by
/// id, finds nothing) or another writer changed its version first.
async fn updated<'e, T>(
    exec: impl Executor<'e, Database = Any>,
    kind: &'static str,
    exists: &'static str,
    id: &str,
    row: Option<T>,
) -> Result<T, Error> {
    if let Some(row) = row {
        return Ok(row);
    }
    let found = sqlx::query(exists)
        .bind(id.to_owned())
        .fetch_optional(exec)
        .await
        .map_err(db("checking an update"))?;
    Err(match found {
        Some(_) => stale(kind, id),
        None => not_found(kind, id),
    })
}

/// Deletes one row by id; a foreign-key refusal becomes a conflict naming what still uses it.
async fn delete_by_id<'e>(
    exec: impl Executor<'e, Database = Any>,
    sql: &'static str,
    kind: &'static str,
    id: &str,
    in_use_by: &str,
) -> Result<(), Error> {
    match sqlx::query(sql).bind(id.to_owned()).execute(exec).await {
        Ok(done) if done.rows_affected() == 0 => Err(not_found(kind, id)),
        Ok(_) => Ok(()),
        Err(e) if is_foreign_key(&e) => Err(Error::Conflict(format!(
            "{kind} {id} is still used by {in_use_by}"
        ))),
        Err(e) => Err(map_db_error("deleting", e)),
    }
}

/// One object by id (`sql` selects it by `$1`); `NotFound` names its `kind`.
async fn by_id<'e, T>(
    exec: impl Executor<'e, Database = Any>,
    sql: &'static str,
    (operation, kind): (&'static str, &'static str),
    decode: fn(&AnyRow) -> Result<T, Error>,
    id: &str,
) -> Result<T, Error> {
    let query = sqlx::query(sql).bind(id.to_owned());
    fetch_row(exec, operation, query, decode)
        .await?
        .ok_or_else(|| not_found(kind, id))
}

const CONNECTION_BY_ID: &str = concat!(
    "SELECT ",
    connection_cols!(),
    " FROM connections WHERE id = $1"
);
const GATEWAY_BY_ID: &str = concat!("SELECT ", gateway_cols!(), " FROM gateways WHERE id = $1");
const TASK_BY_ID: &str = concat!("SELECT ", task_cols!(), " FROM data_tasks WHERE id = $1");

impl MetadataStore for SqlStore {
    // --- Tenants ------------------------------------------------------------------------

    async fn create_tenant(&self, name: &str) -> Result<Tenant, Error> {
        check_name("name", name)?;
        let tenant = Tenant {
            id: new_id("tn"),
            name: name.to_owned(),
            created_at_ms: now_ms(),
        };
        self.affected(
            "creating a tenant",
            sqlx::query("INSERT INTO tenants (id, name, created_at_ms) VALUES ($1, $2, $3)")
                .bind(tenant.id.clone())
                .bind(tenant.name.clone())
                .bind(tenant.created_at_ms),
        )
        .await?;
        Ok(tenant)
    }

    async fn tenant(&self, id: &str) -> Result<Tenant, Error> {
        let sql = concat!("SELECT ", tenant_cols!(), " FROM tenants WHERE id = $1");
        self.one(
            "reading a tenant",
            sqlx::query(sql).bind(id.to_owned()),
            tenant_row,
        )
        .await?
        .ok_or_else(|| not_found("tenant", id))
    }

    async fn tenants(&self, page: &PageRequest) -> Result<Page<Tenant>, Error> {
        let sql = concat!(
            "SELECT ",
            tenant_cols!(),
            " FROM tenants WHERE 1 = 1",
            keyset!("created_at_ms", 1, 2, 3)
        );
        self.page("listing tenants", sqlx::query(sql), page, tenant_row, |t| {
            (t.created_at_ms, &t.id)
        })
        .await
    }

    async fn delete_tenant(&self, id: &str) -> Result<(), Error> {
        self.delete(
            "DELETE FROM tenants WHERE id = $1",
            "tenant",
            id,
            "data spaces, users or data keys",
        )
        .await
    }

    async fn tenant_setting(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, Error> {
        let op = "reading a tenant setting";
        let row =
            sqlx::query("SELECT value FROM tenant_settings WHERE tenant_id = $1 AND name = $2")
                .bind(tenant_id.to_owned())
                .bind(name.to_owned())
                .fetch_optional(&self.pool)
                .await
                .map_err(db(op))?;
        row.map(|row| get_json(&row, "value")).transpose()
    }

    async fn init_tenant_setting(
        &self,
        tenant_id: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        crate::validate_name("setting name", name)?;
        let sql = concat!(
            "INSERT INTO tenant_settings (tenant_id, name, value, updated_at_ms) ",
            "SELECT id, $2, $3, $4 FROM tenants WHERE id = $1 ",
            "ON CONFLICT (tenant_id, name) DO NOTHING"
        );
        let query = sqlx::query(sql)
            .bind(tenant_id.to_owned())
            .bind(name.to_owned())
            .bind(value.to_string())
            .bind(now_ms());
        self.affected("initializing a tenant setting", query)
            .await?;
        self.tenant_setting(tenant_id, name)
            .await?
            .ok_or_else(|| not_found("tenant", tenant_id))
    }

    async fn set_tenant_setting(
        &self,
        tenant_id: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<(), Error> {
        crate::validate_name("setting name", name)?;
        let sql = concat!(
            "INSERT INTO tenant_settings (tenant_id, name, value, updated_at_ms) ",
            "SELECT id, $2, $3, $4 FROM tenants WHERE id = $1 ",
            "ON CONFLICT (tenant_id, name) DO UPDATE SET value = excluded.value, ",
            "updated_at_ms = excluded.updated_at_ms"
        );
        let query = sqlx::query(sql)
            .bind(tenant_id.to_owned())
            .bind(name.to_owned())
            .bind(value.to_string())
            .bind(now_ms());
        match self.affected("writing a tenant setting", query).await? {
            0 => Err(not_found("tenant", tenant_id)),
            _ => Ok(()),
        }
    }

    // --- Data spaces --------------------------------------------------------------------

    async fn create_space(&self, new: &NewDataSpace) -> Result<DataSpace, Error> {
        check_name("name", &new.name)?;
        check_len("description", &new.description, 4000)?;
        let sql = concat!(
            "INSERT INTO data_spaces (id, tenant_id, name, description, created_at_ms, ",
            "updated_at_ms, version) SELECT $1, id, $3, $4, $5, $5, 1 FROM tenants ",
            "WHERE id = $2 RETURNING ",
            space_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("sp"))
            .bind(new.tenant_id.clone())
            .bind(new.name.clone())
            .bind(new.description.clone())
            .bind(now_ms());
        self.write_one("creating a data space", query, space_row)
            .await?
            .ok_or_else(|| not_found("tenant", &new.tenant_id))
    }

    async fn space(&self, id: &str) -> Result<DataSpace, Error> {
        let sql = concat!("SELECT ", space_cols!(), " FROM data_spaces WHERE id = $1");
        self.one(
            "reading a data space",
            sqlx::query(sql).bind(id.to_owned()),
            space_row,
        )
        .await?
        .ok_or_else(|| not_found("data space", id))
    }

    async fn spaces(&self, tenant_id: &str, page: &PageRequest) -> Result<Page<DataSpace>, Error> {
        let sql = concat!(
            "SELECT ",
            space_cols!(),
            " FROM data_spaces WHERE tenant_id = $1",
            keyset!("created_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(tenant_id.to_owned());
        self.page("listing data spaces", query, page, space_row, |s| {
            (s.created_at_ms, &s.id)
        })
        .await
    }

    async fn create_data_product(&self, new: &NewDataProduct) -> Result<DataProduct, Error> {
        check_name("name", &new.name)?;
        check_len("description", &new.description, 4000)?;
        if new.task_ids.is_empty() || new.task_ids.len() > 100 {
            return Err(Error::Invalid {
                field: "task_ids",
                reason: "a data product bundles 1 to 100 data tasks".into(),
            });
        }
        let sql = concat!(
            "INSERT INTO data_products (id, tenant_id, name, description, task_ids, created_by, ",
            "created_at_ms) SELECT $1, id, $3, $4, $5, $6, $7 FROM tenants WHERE id = $2 ",
            "RETURNING ",
            product_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("dp"))
            .bind(new.tenant_id.clone())
            .bind(new.name.clone())
            .bind(new.description.clone())
            .bind(to_json("task_ids", &new.task_ids)?)
            .bind(new.created_by.clone())
            .bind(now_ms());
        self.write_one("creating a data product", query, product_row)
            .await?
            .ok_or_else(|| not_found("tenant", &new.tenant_id))
    }

    async fn data_products(
        &self,
        tenant_id: &str,
        page: &PageRequest,
    ) -> Result<Page<DataProduct>, Error> {
        let sql = concat!(
            "SELECT ",
            product_cols!(),
            " FROM data_products WHERE tenant_id = $1",
            keyset!("created_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(tenant_id.to_owned());
        self.page("listing data products", query, page, product_row, |p| {
            (p.created_at_ms, &p.id)
        })
        .await
    }

    async fn update_space(&self, space: &DataSpace) -> Result<DataSpace, Error> {
        check_name("name", &space.name)?;
        check_len("description", &space.description, 4000)?;
        let sql = concat!(
            "UPDATE data_spaces SET name = $2, description = $3, updated_at_ms = $4, ",
            "version = version + 1 WHERE id = $1 AND version = $5 RETURNING ",
            space_cols!()
        );
        let query = sqlx::query(sql)
            .bind(space.id.clone())
            .bind(space.name.clone())
            .bind(space.description.clone())
            .bind(now_ms())
            .bind(space.version);
        let row = self
            .write_one("updating a data space", query, space_row)
            .await?;
        self.updated(
            "data space",
            "SELECT 1 FROM data_spaces WHERE id = $1",
            &space.id,
            row,
        )
        .await
    }

    async fn delete_space(&self, id: &str) -> Result<(), Error> {
        self.delete(
            "DELETE FROM data_spaces WHERE id = $1",
            "data space",
            id,
            "gateways, connections or data tasks",
        )
        .await
    }

    // --- Users and roles ----------------------------------------------------------------

    async fn create_user(&self, new: &NewUser) -> Result<User, Error> {
        check_user(
            &new.username,
            &new.display_name,
            &new.email,
            new.password_hash.as_ref(),
            new.oidc.as_ref(),
        )?;
        let sql = concat!(
            "INSERT INTO users (id, tenant_id, username, display_name, email, password_hash, ",
            "oidc_issuer, oidc_subject, disabled, created_at_ms, updated_at_ms, version) ",
            "SELECT $1, id, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1 FROM tenants WHERE id = $2 ",
            "RETURNING ",
            user_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("usr"))
            .bind(new.tenant_id.clone())
            .bind(new.username.clone())
            .bind(new.display_name.clone())
            .bind(new.email.clone())
            .bind(new.password_hash.as_ref().map(|h| h.as_str().to_owned()))
            .bind(new.oidc.as_ref().map(|o| o.issuer.clone()))
            .bind(new.oidc.as_ref().map(|o| o.subject.clone()))
            .bind(false)
            .bind(now_ms());
        self.write_one("creating a user", query, user_row)
            .await?
            .ok_or_else(|| not_found("tenant", &new.tenant_id))
    }

    async fn user(&self, id: &str) -> Result<User, Error> {
        let sql = concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1");
        self.one(
            "reading a user",
            sqlx::query(sql).bind(id.to_owned()),
            user_row,
        )
        .await?
        .ok_or_else(|| not_found("user", id))
    }

    async fn user_by_username(&self, tenant_id: &str, username: &str) -> Result<User, Error> {
        let sql = concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE tenant_id = $1 AND username = $2"
        );
        let query = sqlx::query(sql)
            .bind(tenant_id.to_owned())
            .bind(username.to_owned());
        self.one("reading a user", query, user_row)
            .await?
            .ok_or_else(|| not_found("user", username))
    }

    async fn user_by_oidc(&self, identity: &OidcIdentity) -> Result<User, Error> {
        let sql = concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2"
        );
        let query = sqlx::query(sql)
            .bind(identity.issuer.clone())
            .bind(identity.subject.clone());
        self.one("reading a user", query, user_row)
            .await?
            .ok_or_else(|| not_found("user", &identity.subject))
    }

    async fn users(&self, tenant_id: &str, page: &PageRequest) -> Result<Page<User>, Error> {
        let sql = concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE tenant_id = $1",
            keyset!("created_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(tenant_id.to_owned());
        self.page("listing users", query, page, user_row, |u| {
            (u.created_at_ms, &u.id)
        })
        .await
    }

    async fn update_user(&self, user: &User) -> Result<User, Error> {
        check_user(
            &user.username,
            &user.display_name,
            &user.email,
            user.password_hash.as_ref(),
            user.oidc.as_ref(),
        )?;
        let sql = concat!(
            "UPDATE users SET username = $2, display_name = $3, email = $4, password_hash = $5, ",
            "oidc_issuer = $6, oidc_subject = $7, disabled = $8, updated_at_ms = $9, ",
            "version = version + 1 WHERE id = $1 AND version = $10 RETURNING ",
            user_cols!()
        );
        let query = sqlx::query(sql)
            .bind(user.id.clone())
            .bind(user.username.clone())
            .bind(user.display_name.clone())
            .bind(user.email.clone())
            .bind(user.password_hash.as_ref().map(|h| h.as_str().to_owned()))
            .bind(user.oidc.as_ref().map(|o| o.issuer.clone()))
            .bind(user.oidc.as_ref().map(|o| o.subject.clone()))
            .bind(user.disabled)
            .bind(now_ms())
            .bind(user.version);
        let row = self.write_one("updating a user", query, user_row).await?;
        self.updated("user", "SELECT 1 FROM users WHERE id = $1", &user.id, row)
            .await
    }

    async fn delete_user(&self, id: &str) -> Result<(), Error> {
        self.delete(
            "DELETE FROM users WHERE id = $1",
            "user",
            id,
            "other objects",
        )
        .await
    }

    async fn grant_system_role(
        &self,
        user_id: &str,
        role: &str,
    ) -> Result<SystemRoleAssignment, Error> {
        check_role(role)?;
        let sql = concat!(
            "INSERT INTO user_system_roles (user_id, role, granted_at_ms) ",
            "SELECT id, $2, $3 FROM users WHERE id = $1 RETURNING user_id, role, granted_at_ms"
        );
        let query = sqlx::query(sql)
            .bind(user_id.to_owned())
            .bind(role.to_owned())
            .bind(now_ms());
        self.write_one("granting a system role", query, system_role_row)
            .await?
            .ok_or_else(|| not_found("user", user_id))
    }

    async fn revoke_system_role(&self, user_id: &str, role: &str) -> Result<bool, Error> {
        let query = sqlx::query("DELETE FROM user_system_roles WHERE user_id = $1 AND role = $2")
            .bind(user_id.to_owned())
            .bind(role.to_owned());
        Ok(self.affected("revoking a system role", query).await? > 0)
    }

    async fn system_roles(&self, user_id: &str) -> Result<Vec<SystemRoleAssignment>, Error> {
        let sql = concat!(
            "SELECT user_id, role, granted_at_ms FROM user_system_roles WHERE user_id = $1 ",
            "ORDER BY role"
        );
        let rows = sqlx::query(sql)
            .bind(user_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing system roles"))?;
        rows.iter().map(system_role_row).collect()
    }

    async fn grant_space_role(
        &self,
        user_id: &str,
        space_id: &str,
        role: &str,
    ) -> Result<SpaceRoleAssignment, Error> {
        check_role(role)?;
        let sql = concat!(
            "INSERT INTO space_roles (id, tenant_id, user_id, space_id, role, granted_at_ms) ",
            "SELECT $1, u.tenant_id, u.id, s.id, $4, $5 FROM users u ",
            "JOIN data_spaces s ON s.tenant_id = u.tenant_id WHERE u.id = $2 AND s.id = $3 ",
            "RETURNING ",
            space_role_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("sr"))
            .bind(user_id.to_owned())
            .bind(space_id.to_owned())
            .bind(role.to_owned())
            .bind(now_ms());
        match self
            .write_one("granting a data space role", query, space_role_row)
            .await?
        {
            Some(granted) => Ok(granted),
            None => {
                self.user(user_id).await?;
                self.space(space_id).await?;
                Err(Error::Invalid {
                    field: "space_id",
                    reason: "the data space belongs to another tenant than the user".into(),
                })
            }
        }
    }

    async fn revoke_space_role(
        &self,
        user_id: &str,
        space_id: &str,
        role: &str,
    ) -> Result<bool, Error> {
        let sql = "DELETE FROM space_roles WHERE user_id = $1 AND space_id = $2 AND role = $3";
        let query = sqlx::query(sql)
            .bind(user_id.to_owned())
            .bind(space_id.to_owned())
            .bind(role.to_owned());
        Ok(self.affected("revoking a data space role", query).await? > 0)
    }

    async fn space_roles_of_user(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> Result<Page<SpaceRoleAssignment>, Error> {
        let sql = concat!(
            "SELECT ",
            space_role_cols!(),
            " FROM space_roles WHERE user_id = $1",
            keyset!("granted_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(user_id.to_owned());
        self.page(
            "listing data space roles",
            query,
            page,
            space_role_row,
            |r| (r.granted_at_ms, &r.id),
        )
        .await
    }

    async fn held_roles(&self, user_id: &str, space_id: Option<&str>) -> Result<HeldRoles, Error> {
        let sql = concat!(
            "SELECT 'system' AS scope, role FROM user_system_roles WHERE user_id = $1 ",
            "UNION ALL SELECT 'space' AS scope, role FROM space_roles ",
            "WHERE user_id = $1 AND space_id = $2"
        );
        let rows = sqlx::query(sql)
            .bind(user_id.to_owned())
            .bind(space_id.map(str::to_owned))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading a user's roles"))?;
        let mut held = HeldRoles::default();
        for row in &rows {
            let role = get(row, "role")?;
            match get::<String>(row, "scope")?.as_str() {
                "system" => held.system.push(role),
                _ => held.in_space.push(role),
            }
        }
        Ok(held)
    }

    async fn space_members(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> Result<Page<SpaceRoleAssignment>, Error> {
        let sql = concat!(
            "SELECT ",
            space_role_cols!(),
            " FROM space_roles WHERE space_id = $1",
            keyset!("granted_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(space_id.to_owned());
        self.page(
            "listing data space roles",
            query,
            page,
            space_role_row,
            |r| (r.granted_at_ms, &r.id),
        )
        .await
    }

    // --- Login sessions -----------------------------------------------------------------

    async fn create_session(&self, new: &NewLoginSession) -> Result<LoginSession, Error> {
        let sql = concat!(
            "INSERT INTO login_sessions (id, user_id, token_sha256, created_at_ms, ",
            "expires_at_ms) SELECT $1, id, $3, $4, $5 FROM users WHERE id = $2 ",
            "RETURNING ",
            session_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("ses"))
            .bind(new.user_id.clone())
            .bind(new.token.as_bytes().to_vec())
            .bind(now_ms())
            .bind(new.expires_at_ms);
        self.write_one("creating a login session", query, session_row)
            .await?
            .ok_or_else(|| not_found("user", &new.user_id))
    }

    async fn session(&self, id: &str) -> Result<LoginSession, Error> {
        let sql = concat!(
            "SELECT ",
            session_cols!(),
            " FROM login_sessions WHERE id = $1"
        );
        self.one(
            "reading a login session",
            sqlx::query(sql).bind(id.to_owned()),
            session_row,
        )
        .await?
        .ok_or_else(|| not_found("login session", id))
    }

    async fn valid_session(&self, token: &TokenDigest, now_ms: i64) -> Result<LoginSession, Error> {
        Ok(self.valid_session_user(token, now_ms).await?.0)
    }

    async fn valid_session_user(
        &self,
        token: &TokenDigest,
        now_ms: i64,
    ) -> Result<(LoginSession, User), Error> {
        // The session's columns that the user's share are renamed.
        let sql = concat!(
            "SELECT s.id AS session_id, s.user_id, s.token_sha256, ",
            "s.created_at_ms AS session_created_at_ms, s.expires_at_ms, s.revoked_at_ms, ",
            "u.id, u.tenant_id, u.username, u.display_name, u.email, u.password_hash, ",
            "u.oidc_issuer, u.oidc_subject, u.disabled, u.created_at_ms, u.updated_at_ms, ",
            "u.version FROM login_sessions s JOIN users u ON u.id = s.user_id ",
            "WHERE s.token_sha256 = $1 AND s.revoked_at_ms IS NULL AND s.expires_at_ms > $2 ",
            "AND u.disabled = $3"
        );
        let query = sqlx::query(sql)
            .bind(token.as_bytes().to_vec())
            .bind(now_ms)
            .bind(false);
        let decode = |row: &AnyRow| {
            let session = session_columns(row, "session_id", "session_created_at_ms")?;
            Ok((session, user_row(row)?))
        };
        self.one("checking a login session", query, decode)
            .await?
            .ok_or_else(|| not_found("login session", "for this token"))
    }

    async fn revoke_session(&self, id: &str, now_ms: i64) -> Result<(), Error> {
        let sql = concat!(
            "UPDATE login_sessions SET revoked_at_ms = COALESCE(revoked_at_ms, $2) ",
            "WHERE id = $1"
        );
        let query = sqlx::query(sql).bind(id.to_owned()).bind(now_ms);
        match self.affected("revoking a login session", query).await? {
            0 => Err(not_found("login session", id)),
            _ => Ok(()),
        }
    }

    async fn revoke_user_sessions(&self, user_id: &str, now_ms: i64) -> Result<u64, Error> {
        let sql = concat!(
            "UPDATE login_sessions SET revoked_at_ms = $2 ",
            "WHERE user_id = $1 AND revoked_at_ms IS NULL"
        );
        let query = sqlx::query(sql).bind(user_id.to_owned()).bind(now_ms);
        self.affected("revoking login sessions", query).await
    }

    async fn sessions_of_user(
        &self,
        user_id: &str,
        page: &PageRequest,
    ) -> Result<Page<LoginSession>, Error> {
        let sql = concat!(
            "SELECT ",
            session_cols!(),
            " FROM login_sessions WHERE user_id = $1",
            keyset!("created_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(user_id.to_owned());
        self.page("listing login sessions", query, page, session_row, |s| {
            (s.created_at_ms, &s.id)
        })
        .await
    }

    async fn purge_expired_sessions(&self, now_ms: i64) -> Result<u64, Error> {
        let query =
            sqlx::query("DELETE FROM login_sessions WHERE expires_at_ms <= $1").bind(now_ms);
        self.affected("purging expired login sessions", query).await
    }

    // --- Tenant data keys ---------------------------------------------------------------

    async fn add_data_key(&self, new: &NewDataKey) -> Result<DataKey, Error> {
        check_name("kek_id", &new.kek_id)?;
        check_bytes("wrapped_key", &new.wrapped_key, 65_536)?;
        let op = "adding a data key";
        let mut tx = self.writer.begin().await.map_err(db(op))?;
        if new.activate {
            // Writes first, so SQLite takes its write lock before it reads.
            sqlx::query(
                "UPDATE tenant_data_keys SET active = $2 WHERE tenant_id = $1 AND active = $3",
            )
            .bind(new.tenant_id.clone())
            .bind(false)
            .bind(true)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
        }
        let sql = concat!(
            "INSERT INTO tenant_data_keys (tenant_id, version, kek_id, wrapped_key, active, ",
            "created_at_ms) SELECT t.id, COALESCE((SELECT MAX(k.version) FROM tenant_data_keys k ",
            "WHERE k.tenant_id = t.id), 0) + 1, $2, $3, $4, $5 FROM tenants t WHERE t.id = $1 ",
            "RETURNING ",
            key_cols!()
        );
        let row = sqlx::query(sql)
            .bind(new.tenant_id.clone())
            .bind(new.kek_id.clone())
            .bind(new.wrapped_key.clone())
            .bind(new.activate)
            .bind(now_ms())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(op))?;
        let key = row
            .as_ref()
            .map(key_row)
            .transpose()?
            .ok_or_else(|| not_found("tenant", &new.tenant_id))?;
        tx.commit().await.map_err(db(op))?;
        Ok(key)
    }

    async fn data_key(&self, tenant_id: &str, version: i64) -> Result<DataKey, Error> {
        let sql = concat!(
            "SELECT ",
            key_cols!(),
            " FROM tenant_data_keys WHERE tenant_id = $1 AND version = $2"
        );
        let query = sqlx::query(sql).bind(tenant_id.to_owned()).bind(version);
        self.one("reading a data key", query, key_row)
            .await?
            .ok_or_else(|| not_found("data key", &format!("{tenant_id} v{version}")))
    }

    async fn active_data_key(&self, tenant_id: &str) -> Result<DataKey, Error> {
        let sql = concat!(
            "SELECT ",
            key_cols!(),
            " FROM tenant_data_keys WHERE tenant_id = $1 AND active = $2"
        );
        let query = sqlx::query(sql).bind(tenant_id.to_owned()).bind(true);
        self.one("reading the active data key", query, key_row)
            .await?
            .ok_or_else(|| not_found("active data key of tenant", tenant_id))
    }

    async fn data_keys(&self, tenant_id: &str, page: &PageRequest) -> Result<Page<DataKey>, Error> {
        // Sorted by version; `tenant_id` stands in for the id of other lists' keysets.
        let sql = concat!(
            "SELECT ",
            key_cols!(),
            " FROM tenant_data_keys WHERE tenant_id = $1 ",
            "AND ($2 IS NULL OR (version, tenant_id) > ($2, $3)) ORDER BY version LIMIT $4"
        );
        let query = sqlx::query(sql).bind(tenant_id.to_owned());
        self.page("listing data keys", query, page, key_row, |k| {
            (k.version, &k.tenant_id)
        })
        .await
    }

    async fn activate_data_key(&self, tenant_id: &str, version: i64) -> Result<DataKey, Error> {
        let op = "activating a data key";
        let mut tx = self.writer.begin().await.map_err(db(op))?;
        sqlx::query("UPDATE tenant_data_keys SET active = $2 WHERE tenant_id = $1 AND version <> $3 AND active = $4")
            .bind(tenant_id.to_owned())
            .bind(false)
            .bind(version)
            .bind(true)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
        let sql = concat!(
            "UPDATE tenant_data_keys SET active = $3 WHERE tenant_id = $1 AND version = $2 ",
            "RETURNING ",
            key_cols!()
        );
        let row = sqlx::query(sql)
            .bind(tenant_id.to_owned())
            .bind(version)
            .bind(true)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(op))?;
        let key = row
            .as_ref()
            .map(key_row)
            .transpose()?
            .ok_or_else(|| not_found("data key", &format!("{tenant_id} v{version}")))?;
        tx.commit().await.map_err(db(op))?;
        Ok(key)
    }

    async fn rewrap_data_key(
        &self,
        tenant_id: &str,
        version: i64,
        expected_kek_id: &str,
        new_kek_id: &str,
        new_wrapped_key: &[u8],
    ) -> Result<DataKey, Error> {
        check_name("kek_id", new_kek_id)?;
        check_bytes("wrapped_key", new_wrapped_key, 65_536)?;
        let sql = concat!(
            "UPDATE tenant_data_keys SET kek_id = $4, wrapped_key = $5, rewrapped_at_ms = $6 ",
            "WHERE tenant_id = $1 AND version = $2 AND kek_id = $3 RETURNING ",
            key_cols!()
        );
        let query = sqlx::query(sql)
            .bind(tenant_id.to_owned())
            .bind(version)
            .bind(expected_kek_id.to_owned())
            .bind(new_kek_id.to_owned())
            .bind(new_wrapped_key.to_vec())
            .bind(now_ms());
        match self
            .write_one("rewrapping a data key", query, key_row)
            .await?
        {
            Some(key) => Ok(key),
            None => {
                self.data_key(tenant_id, version).await?;
                Err(Error::Conflict(format!(
                    "data key {tenant_id} v{version} is no longer wrapped by the expected \
                     key-encryption key"
                )))
            }
        }
    }

    // --- Gateways -----------------------------------------------------------------------

    async fn create_gateway(&self, new: &NewGateway) -> Result<GatewayRecord, Error> {
        check_name("name", &new.name)?;
        let sql = concat!(
            "INSERT INTO gateways (id, tenant_id, space_id, name, state, enrollment_sha256, ",
            "enrollment_expires_at_ms, created_at_ms, updated_at_ms, version) ",
            "SELECT $1, tenant_id, id, $3, 'pending_enrollment', $4, $5, $6, $6, 1 ",
            "FROM data_spaces WHERE id = $2 RETURNING ",
            gateway_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("gw"))
            .bind(new.space_id.clone())
            .bind(new.name.clone())
            .bind(new.enrollment.map(|d| d.as_bytes().to_vec()))
            .bind(new.enrollment_expires_at_ms)
            .bind(now_ms());
        self.write_one("creating a gateway", query, gateway_row)
            .await?
            .ok_or_else(|| not_found("data space", &new.space_id))
    }

    async fn gateway(&self, id: &str) -> Result<GatewayRecord, Error> {
        by_id(
            &self.pool,
            GATEWAY_BY_ID,
            ("reading a gateway", "gateway"),
            gateway_row,
            id,
        )
        .await
    }

    async fn gateway_by_enrollment(&self, digest: &TokenDigest) -> Result<GatewayRecord, Error> {
        let sql = concat!(
            "SELECT ",
            gateway_cols!(),
            " FROM gateways WHERE enrollment_sha256 = $1"
        );
        let query = sqlx::query(sql).bind(digest.as_bytes().to_vec());
        self.one("reading a gateway", query, gateway_row)
            .await?
            .ok_or_else(|| not_found("gateway", "for this enrollment token"))
    }

    async fn gateways(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> Result<Page<GatewayRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            gateway_cols!(),
            " FROM gateways WHERE space_id = $1",
            keyset!("created_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(space_id.to_owned());
        self.page("listing gateways", query, page, gateway_row, |g| {
            (g.created_at_ms, &g.id)
        })
        .await
    }

    async fn update_gateway(&self, gateway: &GatewayRecord) -> Result<GatewayRecord, Error> {
        check_name("name", &gateway.name)?;
        let (state, reason) = gateway_state_columns(&gateway.state);
        let sql = concat!(
            "UPDATE gateways SET name = $2, state = $3, state_reason = $4, public_key = $5, ",
            "software = $6, enrollment_sha256 = $7, enrollment_expires_at_ms = $8, ",
            "updated_at_ms = $9, version = version + 1 WHERE id = $1 AND version = $10 ",
            "RETURNING ",
            gateway_cols!()
        );
        let query = sqlx::query(sql)
            .bind(gateway.id.clone())
            .bind(gateway.name.clone())
            .bind(state)
            .bind(reason)
            .bind(gateway.public_key.clone())
            .bind(gateway.software.clone())
            .bind(gateway.enrollment.map(|d| d.as_bytes().to_vec()))
            .bind(gateway.enrollment_expires_at_ms)
            .bind(now_ms())
            .bind(gateway.version);
        let row = self
            .write_one("updating a gateway", query, gateway_row)
            .await?;
        self.updated(
            "gateway",
            "SELECT 1 FROM gateways WHERE id = $1",
            &gateway.id,
            row,
        )
        .await
    }

    async fn record_gateway_seen(
        &self,
        id: &str,
        seen_at_ms: i64,
        metrics: Option<&MetricsReport>,
    ) -> Result<(), Error> {
        let metrics = metrics.map(|m| to_json("metrics", m)).transpose()?;
        let sql = concat!(
            "UPDATE gateways SET last_seen_at_ms = $2, metrics = COALESCE($3, metrics) ",
            "WHERE id = $1"
        );
        let query = sqlx::query(sql)
            .bind(id.to_owned())
            .bind(seen_at_ms)
            .bind(metrics);
        match self
            .affected("recording a gateway heartbeat", query)
            .await?
        {
            0 => Err(not_found("gateway", id)),
            _ => Ok(()),
        }
    }

    async fn record_gateways_seen(&self, seen: &[GatewaySeen]) -> Result<(), Error> {
        if seen.is_empty() {
            return Ok(());
        }
        let op = "recording gateway heartbeats";
        let mut tx = self.writer.begin().await.map_err(db(op))?;
        for one in seen {
            let metrics = one
                .metrics
                .as_ref()
                .map(|m| to_json("metrics", m))
                .transpose()?;
            // A gateway deleted meanwhile matches no row: nothing to record.
            sqlx::query(concat!(
                "UPDATE gateways SET last_seen_at_ms = $2, metrics = COALESCE($3, metrics) ",
                "WHERE id = $1"
            ))
            .bind(one.id.clone())
            .bind(one.seen_at_ms)
            .bind(metrics)
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
        }
        tx.commit().await.map_err(db(op))
    }

    async fn delete_gateway(&self, id: &str) -> Result<(), Error> {
        self.delete(
            "DELETE FROM gateways WHERE id = $1",
            "gateway",
            id,
            "data tasks",
        )
        .await
    }

    // --- Connections --------------------------------------------------------------------

    async fn create_connection(&self, new: &NewConnection) -> Result<ConnectionRecord, Error> {
        writes::create_connection(&mut *self.write_connection().await?, new).await
    }

    async fn connection(&self, id: &str) -> Result<ConnectionRecord, Error> {
        by_id(
            &self.pool,
            CONNECTION_BY_ID,
            ("reading a connection", "connection"),
            connection_row,
            id,
        )
        .await
    }

    async fn connections(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> Result<Page<ConnectionRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            connection_cols!(),
            " FROM connections WHERE space_id = $1",
            keyset!("created_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(space_id.to_owned());
        self.page("listing connections", query, page, connection_row, |c| {
            (c.created_at_ms, &c.id)
        })
        .await
    }

    async fn update_connection(
        &self,
        connection: &ConnectionRecord,
    ) -> Result<ConnectionRecord, Error> {
        writes::update_connection(&mut *self.write_connection().await?, connection).await
    }

    async fn delete_connection(&self, id: &str) -> Result<(), Error> {
        writes::delete_connection(&mut *self.write_connection().await?, id).await
    }

    // --- Data tasks, runs, schema snapshots ---------------------------------------------

    async fn create_task(&self, new: &NewDataTask) -> Result<DataTaskRecord, Error> {
        writes::create_task(&mut *self.write_connection().await?, new).await
    }

    async fn task(&self, id: &str) -> Result<DataTaskRecord, Error> {
        by_id(
            &self.pool,
            TASK_BY_ID,
            ("reading a data task", "data task"),
            task_row,
            id,
        )
        .await
    }

    async fn tasks(
        &self,
        space_id: &str,
        page: &PageRequest,
    ) -> Result<Page<DataTaskRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            task_cols!(),
            " FROM data_tasks WHERE space_id = $1",
            keyset!("created_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(space_id.to_owned());
        self.page("listing data tasks", query, page, task_row, |t| {
            (t.created_at_ms, &t.id)
        })
        .await
    }

    async fn update_task(&self, task: &DataTaskRecord) -> Result<DataTaskRecord, Error> {
        writes::update_task(&mut *self.write_connection().await?, task).await
    }

    async fn delete_task(&self, id: &str) -> Result<(), Error> {
        writes::delete_task(&mut *self.write_connection().await?, id).await
    }

    async fn create_run(&self, task_id: &str) -> Result<TaskRunRecord, Error> {
        let sql = concat!(
            "INSERT INTO task_runs (id, task_id, state, tables, started_at_ms, updated_at_ms, ",
            "version) SELECT $1, id, 'starting', '{}', $3, $3, 1 FROM data_tasks WHERE id = $2 ",
            "RETURNING ",
            run_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("run"))
            .bind(task_id.to_owned())
            .bind(now_ms());
        self.write_one("starting a run", query, run_row)
            .await?
            .ok_or_else(|| not_found("data task", task_id))
    }

    async fn run(&self, id: &str) -> Result<TaskRunRecord, Error> {
        let sql = concat!("SELECT ", run_cols!(), " FROM task_runs WHERE id = $1");
        self.one(
            "reading a run",
            sqlx::query(sql).bind(id.to_owned()),
            run_row,
        )
        .await?
        .ok_or_else(|| not_found("run", id))
    }

    async fn runs(&self, task_id: &str, page: &PageRequest) -> Result<Page<TaskRunRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            run_cols!(),
            " FROM task_runs WHERE task_id = $1",
            keyset!("started_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(task_id.to_owned());
        self.page("listing runs", query, page, run_row, |r| {
            (r.started_at_ms, &r.id)
        })
        .await
    }

    async fn transition_run(
        &self,
        id: &str,
        from: TaskState,
        to: TaskState,
        error: Option<&str>,
    ) -> Result<TaskRunRecord, Error> {
        if let Some(error) = error {
            check_len("error", error, 16_384)?;
        }
        let now = now_ms();
        let final_state = !matches!(to, TaskState::Starting | TaskState::Running);
        let sql = concat!(
            "UPDATE task_runs SET state = $3, error = $4, ended_at_ms = $5, updated_at_ms = $6, ",
            "version = version + 1 WHERE id = $1 AND state = $2 RETURNING ",
            run_cols!()
        );
        let query = sqlx::query(sql)
            .bind(id.to_owned())
            .bind(task_state_name(from)?)
            .bind(task_state_name(to)?)
            .bind(error.map(str::to_owned))
            .bind(final_state.then_some(now))
            .bind(now);
        match self
            .write_one("changing a run's state", query, run_row)
            .await?
        {
            Some(run) => Ok(run),
            None => {
                let run = self.run(id).await?;
                Err(Error::Conflict(format!(
                    "run {id} is {}, not {}",
                    task_state_name(run.state)?,
                    task_state_name(from)?
                )))
            }
        }
    }

    async fn record_run_tables(
        &self,
        id: &str,
        tables: &BTreeMap<String, TableRun>,
    ) -> Result<(), Error> {
        let query =
            sqlx::query("UPDATE task_runs SET tables = $2, updated_at_ms = $3 WHERE id = $1")
                .bind(id.to_owned())
                .bind(to_json("tables", tables)?)
                .bind(now_ms());
        match self.affected("recording run progress", query).await? {
            0 => Err(not_found("run", id)),
            _ => Ok(()),
        }
    }

    async fn active_runs_on_gateway(&self, gateway_id: &str) -> Result<Vec<TaskRunRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            run_cols!(),
            " FROM task_runs WHERE state IN ('starting', 'running') AND task_id IN ",
            "(SELECT id FROM data_tasks WHERE gateway_id = $1) ORDER BY started_at_ms, id"
        );
        sqlx::query(sql)
            .bind(gateway_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing the runs on a gateway"))?
            .iter()
            .map(run_row)
            .collect()
    }

    async fn idle_capture_runs(&self, tenant_id: &str) -> Result<Vec<TaskRunRecord>, Error> {
        let sql = concat!(
            "SELECT ",
            run_cols!(),
            " FROM task_runs WHERE id IN (SELECT r.id FROM task_runs r ",
            "JOIN data_tasks t ON t.id = r.task_id WHERE t.tenant_id = $1 ",
            "AND t.task_type IN ('change_data_capture', 'store_changes') ",
            "AND r.state IN ('stopped', 'failed') AND NOT EXISTS (SELECT 1 FROM task_runs n ",
            "WHERE n.task_id = r.task_id AND (n.started_at_ms, n.id) > (r.started_at_ms, r.id))) ",
            "ORDER BY started_at_ms, id LIMIT 10000"
        );
        sqlx::query(sql)
            .bind(tenant_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing idle change data capture runs"))?
            .iter()
            .map(run_row)
            .collect()
    }

    async fn record_run_replication(
        &self,
        id: &str,
        replication: &RunReplication,
    ) -> Result<(), Error> {
        let query =
            sqlx::query("UPDATE task_runs SET replication = $2, updated_at_ms = $3 WHERE id = $1")
                .bind(id.to_owned())
                .bind(to_json("replication", replication)?)
                .bind(now_ms());
        match self.affected("recording run replication", query).await? {
            0 => Err(not_found("run", id)),
            _ => Ok(()),
        }
    }

    async fn add_schema_snapshot(&self, new: &NewSchemaSnapshot) -> Result<SchemaSnapshot, Error> {
        check_text("table", &new.table, 1, 1024)?;
        let sql = concat!(
            "INSERT INTO schema_snapshots (id, task_id, run_id, table_name, schema_json, ",
            "taken_at_ms) SELECT $1, task_id, id, $4, $5, $6 FROM task_runs ",
            "WHERE id = $3 AND task_id = $2 RETURNING ",
            snapshot_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("snap"))
            .bind(new.task_id.clone())
            .bind(new.run_id.clone())
            .bind(new.table.clone())
            .bind(to_json("schema", &new.schema)?)
            .bind(now_ms());
        match self
            .write_one("adding a schema snapshot", query, snapshot_row)
            .await?
        {
            Some(snapshot) => Ok(snapshot),
            None => {
                self.run(&new.run_id).await?;
                Err(Error::Invalid {
                    field: "run_id",
                    reason: "the run belongs to another data task".into(),
                })
            }
        }
    }

    async fn schema_snapshots(
        &self,
        task_id: &str,
        page: &PageRequest,
    ) -> Result<Page<SchemaSnapshot>, Error> {
        let sql = concat!(
            "SELECT ",
            snapshot_cols!(),
            " FROM schema_snapshots WHERE task_id = $1",
            keyset!("taken_at_ms", 2, 3, 4)
        );
        let query = sqlx::query(sql).bind(task_id.to_owned());
        self.page("listing schema snapshots", query, page, snapshot_row, |s| {
            (s.taken_at_ms, &s.id)
        })
        .await
    }

    async fn latest_schema_snapshot(
        &self,
        task_id: &str,
        table: &str,
    ) -> Result<SchemaSnapshot, Error> {
        let sql = concat!(
            "SELECT ",
            snapshot_cols!(),
            " FROM schema_snapshots WHERE task_id = $1 ",
            "AND table_name = $2 ORDER BY taken_at_ms DESC, id DESC LIMIT 1"
        );
        let query = sqlx::query(sql)
            .bind(task_id.to_owned())
            .bind(table.to_owned());
        self.one("reading a schema snapshot", query, snapshot_row)
            .await?
            .ok_or_else(|| not_found("schema snapshot of table", table))
    }

    // --- Audit log ----------------------------------------------------------------------

    async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent, Error> {
        writes::append_audit(&mut *self.write_connection().await?, event).await
    }

    async fn audit_events(
        &self,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>, Error> {
        let sql = concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_log WHERE tenant_id = $1 ",
            "AND ($2 IS NULL OR space_id = $2) AND ($3 IS NULL OR actor = $3) ",
            "AND ($4 IS NULL OR action = $4) AND ($5 IS NULL OR at_ms >= $5) ",
            "AND ($6 IS NULL OR at_ms < $6)",
            keyset!("at_ms", 7, 8, 9)
        );
        let query = sqlx::query(sql)
            .bind(filter.tenant_id.clone())
            .bind(filter.space_id.clone())
            .bind(filter.actor.clone())
            .bind(filter.action.clone())
            .bind(filter.from_ms)
            .bind(filter.until_ms);
        self.page("reading the audit log", query, page, audit_row, |e| {
            (e.event.at_ms, &e.id)
        })
        .await
    }

    async fn export_audit(
        &self,
        filter: &AuditFilter,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, Error> {
        let mut request = PageRequest::first(crate::MAX_PAGE_LIMIT);
        let mut written = 0;
        loop {
            let page = self.audit_events(filter, &request).await?;
            for event in &page.items {
                serde_json::to_writer(&mut *out, event).map_err(|e| Error::Export(e.into()))?;
                out.write_all(b"\n").map_err(Error::Export)?;
                written += 1;
            }
            match page.next {
                Some(next) => request.after = Some(next),
                None => break,
            }
        }
        out.flush().map_err(Error::Export)?;
        Ok(written)
    }
}

// --- Transactions -------------------------------------------------------------------------

/// Writes that commit together, in one transaction: one commit (on SQLite, one `fsync` of the
/// write-ahead log) for all of them. Each method does what the [`MetadataStore`] method of
/// the same name does and fails the same way; after a failure, drop the transaction (on
/// PostgreSQL a failed statement aborts it). Nothing is visible to others, nor durable,
/// before [`WriteTx::commit`] returns `Ok`; dropping a `WriteTx` rolls it back.
///
/// Begun by [`SqlStore::begin_write`].
pub struct WriteTx {
    tx: sqlx::Transaction<'static, Any>,
}

impl fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

impl WriteTx {
    /// See [`MetadataStore::connection`]. Sees the transaction's own writes; on SQLite, where
    /// the transaction holds the write lock, nobody changes it before the commit.
    pub async fn connection(&mut self, id: &str) -> Result<ConnectionRecord, Error> {
        by_id(
            &mut *self.tx,
            CONNECTION_BY_ID,
            ("reading a connection", "connection"),
            connection_row,
            id,
        )
        .await
    }

    /// See [`MetadataStore::task`]; what [`WriteTx::connection`] says holds.
    pub async fn task(&mut self, id: &str) -> Result<DataTaskRecord, Error> {
        by_id(
            &mut *self.tx,
            TASK_BY_ID,
            ("reading a data task", "data task"),
            task_row,
            id,
        )
        .await
    }

    /// See [`MetadataStore::create_connection`].
    pub async fn create_connection(
        &mut self,
        new: &NewConnection,
    ) -> Result<ConnectionRecord, Error> {
        writes::create_connection(&mut self.tx, new).await
    }

    /// See [`MetadataStore::update_connection`].
    pub async fn update_connection(
        &mut self,
        connection: &ConnectionRecord,
    ) -> Result<ConnectionRecord, Error> {
        writes::update_connection(&mut self.tx, connection).await
    }

    /// See [`MetadataStore::delete_connection`].
    pub async fn delete_connection(&mut self, id: &str) -> Result<(), Error> {
        writes::delete_connection(&mut self.tx, id).await
    }

    /// See [`MetadataStore::create_task`].
    pub async fn create_task(&mut self, new: &NewDataTask) -> Result<DataTaskRecord, Error> {
        writes::create_task(&mut self.tx, new).await
    }

    /// See [`MetadataStore::update_task`].
    pub async fn update_task(&mut self, task: &DataTaskRecord) -> Result<DataTaskRecord, Error> {
        writes::update_task(&mut self.tx, task).await
    }

    /// See [`MetadataStore::delete_task`].
    pub async fn delete_task(&mut self, id: &str) -> Result<(), Error> {
        writes::delete_task(&mut self.tx, id).await
    }

    /// See [`MetadataStore::append_audit`].
    pub async fn append_audit(&mut self, event: &NewAuditEvent) -> Result<AuditEvent, Error> {
        writes::append_audit(&mut self.tx, event).await
    }

    /// Commits every write; once this returns `Ok` they are durable.
    pub async fn commit(self) -> Result<(), Error> {
        self.tx
            .commit()
            .await
            .map_err(db("committing a transaction"))
    }
}

/// The writes a [`WriteTx`] offers, on any connection: the store runs them on its writer.
mod writes {
    use super::*;

    pub(super) async fn create_connection(
        conn: &mut AnyConnection,
        new: &NewConnection,
    ) -> Result<ConnectionRecord, Error> {
        check_connection(&new.name, &new.kind, new.credentials.as_ref())?;
        let sql = concat!(
            "INSERT INTO connections (id, tenant_id, space_id, name, kind, settings, ",
            "sealed_credentials, data_key_version, created_at_ms, updated_at_ms, version) ",
            "SELECT $1, tenant_id, id, $3, $4, $5, $6, $7, $8, $8, 1 FROM data_spaces ",
            "WHERE id = $2 RETURNING ",
            connection_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("conn"))
            .bind(new.space_id.clone())
            .bind(new.name.clone())
            .bind(new.kind.clone())
            .bind(to_json("settings", &new.settings)?)
            .bind(new.credentials.as_ref().map(|c| c.ciphertext.clone()))
            .bind(new.credentials.as_ref().map(|c| c.data_key_version))
            .bind(now_ms());
        fetch_row_or(
            conn,
            "creating a connection",
            query,
            connection_row,
            unknown_data_key,
        )
        .await?
        .ok_or_else(|| not_found("data space", &new.space_id))
    }

    pub(super) async fn update_connection(
        conn: &mut AnyConnection,
        connection: &ConnectionRecord,
    ) -> Result<ConnectionRecord, Error> {
        check_connection(
            &connection.name,
            &connection.kind,
            connection.credentials.as_ref(),
        )?;
        let sql = concat!(
            "UPDATE connections SET name = $2, kind = $3, settings = $4, sealed_credentials = $5, ",
            "data_key_version = $6, updated_at_ms = $7, version = version + 1 ",
            "WHERE id = $1 AND version = $8 RETURNING ",
            connection_cols!()
        );
        let query = sqlx::query(sql)
            .bind(connection.id.clone())
            .bind(connection.name.clone())
            .bind(connection.kind.clone())
            .bind(to_json("settings", &connection.settings)?)
            .bind(
                connection
                    .credentials
                    .as_ref()
                    .map(|c| c.ciphertext.clone()),
            )
            .bind(connection.credentials.as_ref().map(|c| c.data_key_version))
            .bind(now_ms())
            .bind(connection.version);
        let row = fetch_row_or(
            &mut *conn,
            "updating a connection",
            query,
            connection_row,
            unknown_data_key,
        )
        .await?;
        let exists = "SELECT 1 FROM connections WHERE id = $1";
        updated(conn, "connection", exists, &connection.id, row).await
    }

    pub(super) async fn delete_connection(conn: &mut AnyConnection, id: &str) -> Result<(), Error> {
        delete_by_id(
            conn,
            "DELETE FROM connections WHERE id = $1",
            "connection",
            id,
            "data tasks",
        )
        .await
    }

    pub(super) async fn create_task(
        conn: &mut AnyConnection,
        new: &NewDataTask,
    ) -> Result<DataTaskRecord, Error> {
        check_task(&new.name, &new.tables, new.schedule.as_deref())?;
        let sql = concat!(
            "INSERT INTO data_tasks (id, tenant_id, space_id, name, task_type, ",
            "source_connection_id, target_connection_id, gateway_id, include_tables, ",
            "exclude_tables, schedule, created_at_ms, updated_at_ms, version) ",
            "SELECT $1, tenant_id, id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, 1 ",
            "FROM data_spaces WHERE id = $2 RETURNING ",
            task_cols!()
        );
        let query = sqlx::query(sql)
            .bind(new_id("task"))
            .bind(new.space_id.clone())
            .bind(new.name.clone())
            .bind(new.task_type.as_str())
            .bind(new.source_connection_id.clone())
            .bind(new.target_connection_id.clone())
            .bind(new.gateway_id.clone())
            .bind(to_json("tables", &new.tables.include)?)
            .bind(to_json("tables", &new.tables.exclude)?)
            .bind(new.schedule.clone())
            .bind(now_ms());
        match query.fetch_optional(&mut *conn).await {
            Ok(Some(row)) => task_row(&row),
            Ok(None) => Err(not_found("data space", &new.space_id)),
            Err(e) if is_foreign_key(&e) => Err(task_refs_error(
                conn,
                &new.space_id,
                &new.source_connection_id,
                &new.target_connection_id,
                &new.gateway_id,
            )
            .await),
            Err(e) => Err(map_db_error("creating a data task", e)),
        }
    }

    pub(super) async fn update_task(
        conn: &mut AnyConnection,
        task: &DataTaskRecord,
    ) -> Result<DataTaskRecord, Error> {
        check_task(&task.name, &task.tables, task.schedule.as_deref())?;
        let sql = concat!(
            "UPDATE data_tasks SET name = $2, task_type = $3, source_connection_id = $4, ",
            "target_connection_id = $5, gateway_id = $6, include_tables = $7, ",
            "exclude_tables = $8, schedule = $9, updated_at_ms = $10, version = version + 1 ",
            "WHERE id = $1 AND version = $11 RETURNING ",
            task_cols!()
        );
        let query = sqlx::query(sql)
            .bind(task.id.clone())
            .bind(task.name.clone())
            .bind(task.task_type.as_str())
            .bind(task.source_connection_id.clone())
            .bind(task.target_connection_id.clone())
            .bind(task.gateway_id.clone())
            .bind(to_json("tables", &task.tables.include)?)
            .bind(to_json("tables", &task.tables.exclude)?)
            .bind(task.schedule.clone())
            .bind(now_ms())
            .bind(task.version);
        match query.fetch_optional(&mut *conn).await {
            Ok(row) => {
                let row = row.as_ref().map(task_row).transpose()?;
                let exists = "SELECT 1 FROM data_tasks WHERE id = $1";
                updated(conn, "data task", exists, &task.id, row).await
            }
            Err(e) if is_foreign_key(&e) => Err(task_refs_error(
                conn,
                &task.space_id,
                &task.source_connection_id,
                &task.target_connection_id,
                &task.gateway_id,
            )
            .await),
            Err(e) => Err(map_db_error("updating a data task", e)),
        }
    }

    pub(super) async fn delete_task(conn: &mut AnyConnection, id: &str) -> Result<(), Error> {
        let sql = concat!(
            "DELETE FROM data_tasks WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM task_runs ",
            "WHERE task_id = $1 AND state IN ('starting', 'running'))"
        );
        let query = sqlx::query(sql).bind(id.to_owned());
        match rows_affected(&mut *conn, "deleting a data task", query).await? {
            0 => {
                by_id(
                    conn,
                    TASK_BY_ID,
                    ("reading a data task", "data task"),
                    task_row,
                    id,
                )
                .await?;
                Err(Error::Conflict(format!(
                    "data task {id} has a starting or running run"
                )))
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn append_audit(
        conn: &mut AnyConnection,
        event: &NewAuditEvent,
    ) -> Result<AuditEvent, Error> {
        for (field, value) in [
            ("actor", &event.actor),
            ("action", &event.action),
            ("target_kind", &event.target_kind),
        ] {
            check_text(field, value, 1, 256)?;
        }
        let recorded = AuditEvent {
            id: new_id("aud"),
            event: event.clone(),
        };
        let sql = concat!(
            "INSERT INTO audit_log (",
            audit_cols!(),
            ") ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        let query = sqlx::query(sql)
            .bind(recorded.id.clone())
            .bind(event.at_ms)
            .bind(event.tenant_id.clone())
            .bind(event.space_id.clone())
            .bind(event.actor.clone())
            .bind(event.action.clone())
            .bind(event.target_kind.clone())
            .bind(event.target_id.clone())
            .bind(event.source_addr.clone())
            .bind(event.outcome.as_str())
            .bind(to_json("detail", &event.detail)?);
        rows_affected(conn, "appending to the audit log", query).await?;
        Ok(recorded)
    }

    /// Says why a task's references were refused: a missing object, or one of another space.
    async fn task_refs_error(
        conn: &mut AnyConnection,
        space_id: &str,
        source: &str,
        target: &str,
        gateway: &str,
    ) -> Error {
        for (field, id) in [
            ("source_connection_id", source),
            ("target_connection_id", target),
        ] {
            match by_id(
                &mut *conn,
                CONNECTION_BY_ID,
                ("reading a connection", "connection"),
                connection_row,
                id,
            )
            .await
            {
                Err(e) => return e,
                Ok(c) if c.space_id != space_id => return other_space(field),
                Ok(_) => {}
            }
        }
        match by_id(
            conn,
            GATEWAY_BY_ID,
            ("reading a gateway", "gateway"),
            gateway_row,
            gateway,
        )
        .await
        {
            Err(e) => e,
            Ok(g) if g.space_id != space_id => other_space("gateway_id"),
            Ok(_) => Error::Conflict("the task's references changed concurrently; retry".into()),
        }
    }
}

// --- Row decoding -------------------------------------------------------------------------

fn get<'r, T>(row: &'r AnyRow, column: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(|source| Error::Database {
        operation: "reading a row",
        source,
    })
}

/// A boolean: `BOOLEAN` on PostgreSQL, `INTEGER` 0/1 on SQLite.
fn get_bool(row: &AnyRow, column: &str) -> Result<bool, Error> {
    match row.try_get::<bool, _>(column) {
        Ok(value) => Ok(value),
        Err(_) => get::<i64>(row, column).map(|value| value != 0),
    }
}

fn get_json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T, Error> {
    let text: String = get(row, column)?;
    serde_json::from_str(&text).map_err(|e| Error::Database {
        operation: "reading a row",
        source: sqlx::Error::Decode(format!("column {column}: {e}").into()),
    })
}

fn get_digest(row: &AnyRow, column: &'static str) -> Result<Option<TokenDigest>, Error> {
    get::<Option<Vec<u8>>>(row, column)?
        .map(|bytes| TokenDigest::from_slice(column, &bytes))
        .transpose()
}

fn tenant_row(row: &AnyRow) -> Result<Tenant, Error> {
    Ok(Tenant {
        id: get(row, "id")?,
        name: get(row, "name")?,
        created_at_ms: get(row, "created_at_ms")?,
    })
}

fn product_row(row: &AnyRow) -> Result<DataProduct, Error> {
    Ok(DataProduct {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        name: get(row, "name")?,
        description: get(row, "description")?,
        task_ids: get_json(row, "task_ids")?,
        created_by: get(row, "created_by")?,
        created_at_ms: get(row, "created_at_ms")?,
    })
}

fn space_row(row: &AnyRow) -> Result<DataSpace, Error> {
    Ok(DataSpace {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        name: get(row, "name")?,
        description: get(row, "description")?,
        created_at_ms: get(row, "created_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
        version: get(row, "version")?,
    })
}

fn user_row(row: &AnyRow) -> Result<User, Error> {
    let issuer: Option<String> = get(row, "oidc_issuer")?;
    let subject: Option<String> = get(row, "oidc_subject")?;
    Ok(User {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        username: get(row, "username")?,
        display_name: get(row, "display_name")?,
        email: get(row, "email")?,
        password_hash: get::<Option<String>>(row, "password_hash")?.map(PasswordHash::new),
        oidc: issuer
            .zip(subject)
            .map(|(issuer, subject)| OidcIdentity { issuer, subject }),
        disabled: get_bool(row, "disabled")?,
        created_at_ms: get(row, "created_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
        version: get(row, "version")?,
    })
}

fn system_role_row(row: &AnyRow) -> Result<SystemRoleAssignment, Error> {
    Ok(SystemRoleAssignment {
        user_id: get(row, "user_id")?,
        role: get(row, "role")?,
        granted_at_ms: get(row, "granted_at_ms")?,
    })
}

fn space_role_row(row: &AnyRow) -> Result<SpaceRoleAssignment, Error> {
    Ok(SpaceRoleAssignment {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        user_id: get(row, "user_id")?,
        space_id: get(row, "space_id")?,
        role: get(row, "role")?,
        granted_at_ms: get(row, "granted_at_ms")?,
    })
}

fn session_row(row: &AnyRow) -> Result<LoginSession, Error> {
    session_columns(row, "id", "created_at_ms")
}

/// A session from its columns, with `id` and `created_at_ms` named as given.
fn session_columns(row: &AnyRow, id: &str, created_at_ms: &str) -> Result<LoginSession, Error> {
    Ok(LoginSession {
        id: get(row, id)?,
        user_id: get(row, "user_id")?,
        token: get_digest(row, "token_sha256")?.ok_or_else(|| Error::Invalid {
            field: "token_sha256",
            reason: "missing".into(),
        })?,
        created_at_ms: get(row, created_at_ms)?,
        expires_at_ms: get(row, "expires_at_ms")?,
        revoked_at_ms: get(row, "revoked_at_ms")?,
    })
}

fn key_row(row: &AnyRow) -> Result<DataKey, Error> {
    Ok(DataKey {
        tenant_id: get(row, "tenant_id")?,
        version: get(row, "version")?,
        kek_id: get(row, "kek_id")?,
        wrapped_key: get(row, "wrapped_key")?,
        active: get_bool(row, "active")?,
        created_at_ms: get(row, "created_at_ms")?,
        rewrapped_at_ms: get(row, "rewrapped_at_ms")?,
    })
}

fn gateway_row(row: &AnyRow) -> Result<GatewayRecord, Error> {
    let state: String = get(row, "state")?;
    let reason = get::<Option<String>>(row, "state_reason")?.unwrap_or_default();
    let state = match state.as_str() {
        "pending_enrollment" => GatewayState::PendingEnrollment,
        "active" => GatewayState::Active,
        "deactivated" => GatewayState::Deactivated { reason },
        "outdated" => GatewayState::Outdated { reason },
        _ => {
            return Err(Error::Invalid {
                field: "state",
                reason: "unknown gateway state in the database".into(),
            });
        }
    };
    let metrics: Option<String> = get(row, "metrics")?;
    Ok(GatewayRecord {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        space_id: get(row, "space_id")?,
        name: get(row, "name")?,
        state,
        public_key: get(row, "public_key")?,
        software: get(row, "software")?,
        metrics: match metrics {
            Some(_) => Some(get_json(row, "metrics")?),
            None => None,
        },
        last_seen_at_ms: get(row, "last_seen_at_ms")?,
        enrollment: get_digest(row, "enrollment_sha256")?,
        enrollment_expires_at_ms: get(row, "enrollment_expires_at_ms")?,
        created_at_ms: get(row, "created_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
        version: get(row, "version")?,
    })
}

fn connection_row(row: &AnyRow) -> Result<ConnectionRecord, Error> {
    let ciphertext: Option<Vec<u8>> = get(row, "sealed_credentials")?;
    let key_version: Option<i64> = get(row, "data_key_version")?;
    Ok(ConnectionRecord {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        space_id: get(row, "space_id")?,
        name: get(row, "name")?,
        kind: get(row, "kind")?,
        settings: get_json(row, "settings")?,
        credentials: ciphertext
            .zip(key_version)
            .map(|(ciphertext, data_key_version)| SealedCredentials {
                data_key_version,
                ciphertext,
            }),
        created_at_ms: get(row, "created_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
        version: get(row, "version")?,
    })
}

fn task_row(row: &AnyRow) -> Result<DataTaskRecord, Error> {
    Ok(DataTaskRecord {
        id: get(row, "id")?,
        tenant_id: get(row, "tenant_id")?,
        space_id: get(row, "space_id")?,
        name: get(row, "name")?,
        task_type: TaskType::parse(&get::<String>(row, "task_type")?)?,
        source_connection_id: get(row, "source_connection_id")?,
        target_connection_id: get(row, "target_connection_id")?,
        gateway_id: get(row, "gateway_id")?,
        tables: TableSelection {
            include: get_json(row, "include_tables")?,
            exclude: get_json(row, "exclude_tables")?,
        },
        schedule: get(row, "schedule")?,
        created_at_ms: get(row, "created_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
        version: get(row, "version")?,
    })
}

fn run_row(row: &AnyRow) -> Result<TaskRunRecord, Error> {
    Ok(TaskRunRecord {
        id: get(row, "id")?,
        task_id: get(row, "task_id")?,
        state: task_state(&get::<String>(row, "state")?)?,
        tables: get_json(row, "tables")?,
        error: get(row, "error")?,
        started_at_ms: get(row, "started_at_ms")?,
        ended_at_ms: get(row, "ended_at_ms")?,
        updated_at_ms: get(row, "updated_at_ms")?,
        version: get(row, "version")?,
        replication: get::<Option<String>>(row, "replication")?
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| Error::Database {
                    operation: "reading a row",
                    source: sqlx::Error::Decode(format!("column replication: {e}").into()),
                })
            })
            .transpose()?,
    })
}

fn snapshot_row(row: &AnyRow) -> Result<SchemaSnapshot, Error> {
    Ok(SchemaSnapshot {
        id: get(row, "id")?,
        task_id: get(row, "task_id")?,
        run_id: get(row, "run_id")?,
        table: get(row, "table_name")?,
        schema: get_json(row, "schema_json")?,
        taken_at_ms: get(row, "taken_at_ms")?,
    })
}

fn audit_row(row: &AnyRow) -> Result<AuditEvent, Error> {
    Ok(AuditEvent {
        id: get(row, "id")?,
        event: NewAuditEvent {
            at_ms: get(row, "at_ms")?,
            tenant_id: get(row, "tenant_id")?,
            space_id: get(row, "space_id")?,
            actor: get(row, "actor")?,
            action: get(row, "action")?,
            target_kind: get(row, "target_kind")?,
            target_id: get(row, "target_id")?,
            source_addr: get(row, "source_addr")?,
            outcome: AuditOutcome::parse(&get::<String>(row, "outcome")?)?,
            detail: get_json(row, "detail")?,
        },
    })
}

// --- Values -------------------------------------------------------------------------------

fn gateway_state_columns(state: &GatewayState) -> (&'static str, Option<String>) {
    match state {
        GatewayState::PendingEnrollment => ("pending_enrollment", None),
        GatewayState::Active => ("active", None),
        GatewayState::Deactivated { reason } => ("deactivated", Some(reason.clone())),
        GatewayState::Outdated { reason } => ("outdated", Some(reason.clone())),
    }
}

fn task_state_name(state: TaskState) -> Result<&'static str, Error> {
    Ok(match state {
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Completed => "completed",
        TaskState::Stopped => "stopped",
        TaskState::Failed => "failed",
        _ => {
            return Err(Error::Invalid {
                field: "state",
                reason: "this run state cannot be stored yet".into(),
            });
        }
    })
}

fn task_state(name: &str) -> Result<TaskState, Error> {
    match name {
        "starting" => Ok(TaskState::Starting),
        "running" => Ok(TaskState::Running),
        "completed" => Ok(TaskState::Completed),
        "stopped" => Ok(TaskState::Stopped),
        "failed" => Ok(TaskState::Failed),
        _ => Err(Error::Invalid {
            field: "state",
            reason: "unknown run state in the database".into(),
        }),
    }
}

fn to_json<T: Serialize + ?Sized>(field: &'static str, value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Invalid {
        field,
        reason: e.to_string(),
    })
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// --- Checks -------------------------------------------------------------------------------

fn check_user(
    username: &str,
    display_name: &str,
    email: &str,
    password_hash: Option<&PasswordHash>,
    oidc: Option<&OidcIdentity>,
) -> Result<(), Error> {
    check_name("username", username)?;
    check_name("display_name", display_name)?;
    check_text("email", email, 1, 320)?;
    if let Some(hash) = password_hash {
        check_text("password_hash", hash.as_str(), 1, 1024)?;
    }
    if let Some(oidc) = oidc {
        check_text("oidc.issuer", &oidc.issuer, 1, 1024)?;
        check_text("oidc.subject", &oidc.subject, 1, 1024)?;
    }
    Ok(())
}

fn check_role(role: &str) -> Result<(), Error> {
    check_text("role", role, 1, 64)
}

fn check_connection(
    name: &str,
    kind: &str,
    credentials: Option<&SealedCredentials>,
) -> Result<(), Error> {
    check_name("name", name)?;
    check_text("kind", kind, 1, 64)?;
    if let Some(credentials) = credentials {
        check_bytes("credentials", &credentials.ciphertext, 1 << 20)?;
    }
    Ok(())
}

fn check_task(name: &str, tables: &TableSelection, schedule: Option<&str>) -> Result<(), Error> {
    check_name("name", name)?;
    for pattern in tables.include.iter().chain(&tables.exclude) {
        check_text("tables", pattern, 1, 1024)?;
    }
    if let Some(schedule) = schedule {
        check_text("schedule", schedule, 1, 256)?;
    }
    Ok(())
}

// --- Errors -------------------------------------------------------------------------------

/// Unique constraints: the PostgreSQL name, SQLite's column list, and what the conflict says.
const UNIQUE: &[(&str, &str, &str)] = &[
    (
        "data_products_tenant_name_key",
        "data_products.tenant_id, data_products.name",
        "a data product with this name already exists in the tenant",
    ),
    (
        "tenants_name_key",
        "tenants.name",
        "a tenant with this name already exists",
    ),
    (
        "data_spaces_tenant_name_key",
        "data_spaces.tenant_id, data_spaces.name",
        "a data space with this name already exists in the tenant",
    ),
    (
        "users_tenant_username_key",
        "users.tenant_id, users.username",
        "this username is already taken in the tenant",
    ),
    (
        "users_oidc_key",
        "users.oidc_issuer, users.oidc_subject",
        "this OIDC identity (issuer, subject) already belongs to a user",
    ),
    (
        "user_system_roles_pkey",
        "user_system_roles.user_id, user_system_roles.role",
        "the user already has this system role",
    ),
    (
        "space_roles_user_space_role_key",
        "space_roles.user_id, space_roles.space_id, space_roles.role",
        "the user already has this role in the data space",
    ),
    (
        "login_sessions_token_key",
        "login_sessions.token_sha256",
        "a login session with this token digest already exists",
    ),
    (
        "tenant_data_keys_pkey",
        "tenant_data_keys.tenant_id, tenant_data_keys.version",
        "this data key version already exists (a key was added concurrently; retry)",
    ),
    (
        "tenant_data_keys_one_active",
        "tenant_data_keys.tenant_id",
        "the tenant already has an active data key (activated concurrently; retry)",
    ),
    (
        "gateways_space_name_key",
        "gateways.space_id, gateways.name",
        "a gateway with this name already exists in the data space",
    ),
    (
        "gateways_enrollment_key",
        "gateways.enrollment_sha256",
        "a gateway with this enrollment token digest already exists",
    ),
    (
        "connections_space_name_key",
        "connections.space_id, connections.name",
        "a connection with this name already exists in the data space",
    ),
    (
        "data_tasks_space_name_key",
        "data_tasks.space_id, data_tasks.name",
        "a data task with this name already exists in the data space",
    ),
    (
        "task_runs_one_active",
        "task_runs.task_id",
        "the data task already has a starting or running run",
    ),
];

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| map_db_error(operation, e)
}

/// A foreign-key refusal. SQLite reports `ON DELETE RESTRICT` as a trigger constraint
/// (extended code 1811), which sqlx does not classify; its message is the same as for the
/// other foreign-key failures.
fn is_foreign_key(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e)
        if e.kind() == ErrorKind::ForeignKeyViolation
            || e.message() == "FOREIGN KEY constraint failed")
}

fn map_db_error(operation: &'static str, error: sqlx::Error) -> Error {
    if let sqlx::Error::Database(e) = &error {
        match e.kind() {
            ErrorKind::UniqueViolation => {
                let sqlite_columns = e.message().strip_prefix("UNIQUE constraint failed: ");
                let known = UNIQUE.iter().find(|(name, columns, _)| {
                    e.constraint() == Some(*name) || sqlite_columns == Some(*columns)
                });
                return Error::Conflict(match known {
                    Some((_, _, message)) => (*message).to_owned(),
                    None => format!("{operation}: a unique field is already taken"),
                });
            }
            _ if is_foreign_key(&error) => {
                return Error::Conflict(format!(
                    "{operation}: an object it refers to is missing, or it is still referred to"
                ));
            }
            _ => {}
        }
    }
    Error::Database {
        operation,
        source: error,
    }
}

fn unknown_data_key() -> Error {
    Error::Invalid {
        field: "credentials.data_key_version",
        reason: "the tenant has no data key of this version".into(),
    }
}

fn not_found(kind: &'static str, id: &str) -> Error {
    Error::NotFound {
        kind,
        id: id.to_owned(),
    }
}

fn stale(kind: &'static str, id: &str) -> Error {
    Error::Conflict(format!(
        "{kind} {id} was changed by someone else since it was read; read it again"
    ))
}

fn other_space(field: &'static str) -> Error {
    Error::Invalid {
        field,
        reason: "must name an object of the task's data space".into(),
    }
}
