//! The metadata store's conformance suite: every case runs against SQLite (a file in a temp
//! dir) and a real PostgreSQL cluster, through the public API only (and the raw pool, to
//! show what the database itself refuses).

use std::collections::BTreeMap;
use std::future::Future;

use anyhow::{Result, ensure};
use tidegate_metadata::{
    AuditFilter, AuditOutcome, Backend, Error, GatewayState, MAX_PAGE_LIMIT, MetadataStore,
    NewAuditEvent, NewConnection, NewDataKey, NewDataProduct, NewDataSpace, NewDataTask,
    NewGateway, NewLoginSession, NewSchemaSnapshot, NewUser, OidcIdentity, PageRequest,
    PasswordHash, ReplicationPhase, RunReplication, SCHEMA_VERSION, SealedCredentials, SqlStore,
    StoreOptions, TableRun, TableSelection, TableState, TaskState, TaskType, TokenDigest, sqlx,
};
use tidegate_testkit::PgServer;

// --- The harness ------------------------------------------------------------------------

/// A database to test against: its URL, and what keeps it alive.
struct TestDb {
    options: StoreOptions,
    /// A URL the store cannot open, holding a secret that no error may show.
    bad_url: String,
    _dir: Option<tempfile::TempDir>,
    _server: Option<PgServer>,
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // A name with a space and a quote: the URL must carry any path.
        let path = dir.path().join("meta data's.db");
        let missing = dir
            .path()
            .join(format!("no-such-dir-{SECRET}"))
            .join("x.db");
        Self {
            options: StoreOptions::sqlite_file(&path),
            bad_url: format!("sqlite://{}?mode=rw", missing.display()),
            _dir: Some(dir),
            _server: None,
        }
    }

    async fn postgres() -> Self {
        let server = tokio::task::spawn_blocking(PgServer::start)
            .await
            .expect("join")
            .expect("start PostgreSQL");
        server.create_database("metadata").expect("create database");
        let bad_url = server.url("metadata").replace(server.password(), SECRET);
        Self {
            options: StoreOptions::new(server.url("metadata")),
            bad_url,
            _dir: None,
            _server: Some(server),
        }
    }

    async fn open(&self) -> SqlStore {
        SqlStore::open_with(&self.options)
            .await
            .expect("open the store")
    }
}

const SECRET: &str = "s3cr3t-that-must-not-leak";

/// Declares each case once per backend: `sqlite::case` and `postgres::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::sqlite().await;
                    super::run(super::$case, &db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::postgres().await;
                    super::run(super::$case, &db).await;
                }
            )*
        }
    };
}

async fn run<'a, F, Fut>(case: F, db: &'a TestDb)
where
    F: FnOnce(&'a TestDb) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    if let Err(error) = case(db).await {
        panic!("{error:#}");
    }
}

on_both_backends!(
    migrates_fresh_and_reopens,
    tenants_and_spaces,
    users_and_uniqueness,
    roles,
    sessions,
    data_keys,
    tenant_settings,
    gateways,
    connections,
    tasks_and_references,
    runs_and_snapshots,
    capture_runs,
    pagination,
    audit_log_is_append_only,
    writes_commit_together,
    weird_names_round_trip,
    two_control_planes_race,
    open_errors_hide_the_url,
);

/// `sqlite::memory:` keeps one connection, so every operation sees the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory() -> Result<()> {
    let store = SqlStore::open("sqlite::memory:").await?;
    ensure!(store.backend() == Backend::Sqlite);
    ensure!(store.schema_version().await? == SCHEMA_VERSION);
    let tenants = create_three_tenants(&store).await?;
    for id in tenants {
        store.tenant(&id).await?;
    }
    Ok(())
}

async fn create_three_tenants(store: &SqlStore) -> Result<Vec<String>> {
    let (a, b, c) = tokio::join!(
        store.create_tenant("a"),
        store.create_tenant("b"),
        store.create_tenant("c")
    );
    Ok(vec![a?.id, b?.id, c?.id])
}

// --- Helpers ----------------------------------------------------------------------------

fn conflict<T: std::fmt::Debug>(result: Result<T, Error>, needle: &str) -> Result<()> {
    match result {
        Err(Error::Conflict(message)) if message.contains(needle) => Ok(()),
        other => anyhow::bail!("expected a conflict about {needle:?}, got {other:?}"),
    }
}

fn not_found<T: std::fmt::Debug>(result: Result<T, Error>, kind: &str) -> Result<()> {
    match result {
        Err(Error::NotFound { kind: k, .. }) if k == kind => Ok(()),
        other => anyhow::bail!("expected {kind} not found, got {other:?}"),
    }
}

fn invalid<T: std::fmt::Debug>(result: Result<T, Error>, field: &str) -> Result<()> {
    match result {
        Err(Error::Invalid { field: f, .. }) if f == field => Ok(()),
        other => anyhow::bail!("expected invalid {field}, got {other:?}"),
    }
}

fn space(tenant_id: &str, name: &str) -> NewDataSpace {
    NewDataSpace {
        tenant_id: tenant_id.into(),
        name: name.into(),
        description: String::new(),
    }
}

fn user(tenant_id: &str, username: &str) -> NewUser {
    NewUser {
        tenant_id: tenant_id.into(),
        username: username.into(),
        display_name: format!("{username} (display)"),
        email: format!("{username}@example.com"),
        password_hash: None,
        oidc: None,
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("fits")
}

/// A tenant, a space, a gateway, two connections and a task in that space.
struct Fixture {
    tenant_id: String,
    space_id: String,
    gateway_id: String,
    source_id: String,
    target_id: String,
    task_id: String,
}

/// Generic over the trait, as callers of the store are.
async fn fixture(store: &impl MetadataStore, tenant: &str) -> Result<Fixture> {
    let tenant = store.create_tenant(tenant).await?;
    let space = store.create_space(&space(&tenant.id, "main")).await?;
    let gateway = store
        .create_gateway(&NewGateway {
            space_id: space.id.clone(),
            name: "gw".into(),
            enrollment: None,
            enrollment_expires_at_ms: None,
        })
        .await?;
    let mut ids = Vec::new();
    for name in ["source", "target"] {
        let connection = store
            .create_connection(&NewConnection {
                space_id: space.id.clone(),
                name: name.into(),
                kind: "sqlite".into(),
                settings: BTreeMap::from([("path".into(), format!("/data/{name}.db"))]),
                credentials: None,
            })
            .await?;
        ids.push(connection.id);
    }
    let task = store
        .create_task(&task(&space.id, "copy", &ids[0], &ids[1], &gateway.id))
        .await?;
    Ok(Fixture {
        tenant_id: tenant.id,
        space_id: space.id,
        gateway_id: gateway.id,
        source_id: ids[0].clone(),
        target_id: ids[1].clone(),
        task_id: task.id,
    })
}

fn task(space_id: &str, name: &str, source: &str, target: &str, gateway: &str) -> NewDataTask {
    NewDataTask {
        space_id: space_id.into(),
        name: name.into(),
        task_type: TaskType::FullLoad,
        source_connection_id: source.into(),
        target_connection_id: target.into(),
        gateway_id: gateway.into(),
        tables: TableSelection {
            include: vec!["public.*".into()],
            exclude: vec!["public.tmp_*".into()],
        },
        schedule: Some("0 3 * * *".into()),
    }
}

// --- The cases --------------------------------------------------------------------------

async fn migrates_fresh_and_reopens(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    ensure!(store.schema_version().await? == SCHEMA_VERSION);
    let tenant = store.create_tenant("acme").await?;
    store.close().await;
    // Reopening runs the migrator again: nothing to do, nothing lost.
    let store = db.open().await;
    ensure!(store.schema_version().await? == SCHEMA_VERSION);
    ensure!(store.tenant(&tenant.id).await? == tenant);
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await?;
    ensure!(applied == SCHEMA_VERSION, "each migration is recorded once");
    Ok(())
}

async fn tenants_and_spaces(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    conflict(store.create_tenant("acme").await, "tenant with this name")?;
    invalid(store.create_tenant("").await, "name")?;
    not_found(store.tenant("tn_missing").await, "tenant")?;

    let finance = store.create_space(&space(&acme.id, "finance")).await?;
    ensure!(finance.version == 1 && finance.tenant_id == acme.id);
    conflict(
        store.create_space(&space(&acme.id, "finance")).await,
        "data space with this name",
    )?;
    // The same name in another tenant is fine.
    let other = store.create_tenant("other").await?;
    store.create_space(&space(&other.id, "finance")).await?;
    not_found(
        store.create_space(&space("tn_missing", "x")).await,
        "tenant",
    )?;

    let mut changed = finance.clone();
    changed.description = "Ledgers\nand invoices".into();
    let updated = store.update_space(&changed).await?;
    ensure!(updated.version == 2 && updated.description == changed.description);
    // The old version is stale: optimistic concurrency.
    conflict(
        store.update_space(&changed).await,
        "changed by someone else",
    )?;
    ensure!(store.space(&finance.id).await? == updated);

    conflict(store.delete_tenant(&acme.id).await, "still used")?;
    store.delete_space(&finance.id).await?;
    not_found(store.space(&finance.id).await, "data space")?;
    not_found(store.delete_space(&finance.id).await, "data space")?;
    store.delete_tenant(&acme.id).await?;
    not_found(store.tenant(&acme.id).await, "tenant")?;
    Ok(())
}

async fn users_and_uniqueness(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let other = store.create_tenant("other").await?;
    let oidc = OidcIdentity {
        issuer: "https://id.example.com".into(),
        subject: "alice-sub".into(),
    };
    let mut new = user(&acme.id, "alice");
    new.password_hash = Some(PasswordHash::new(
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
    ));
    new.oidc = Some(oidc.clone());
    let alice = store.create_user(&new).await?;
    ensure!(!alice.disabled && alice.version == 1);
    ensure!(
        !format!("{alice:?}").contains("argon2"),
        "the hash is redacted"
    );
    ensure!(store.user(&alice.id).await? == alice);
    ensure!(store.user_by_username(&acme.id, "alice").await? == alice);
    ensure!(store.user_by_oidc(&oidc).await? == alice);

    conflict(
        store.create_user(&user(&acme.id, "alice")).await,
        "username",
    )?;
    store.create_user(&user(&other.id, "alice")).await?;
    let mut same_identity = user(&other.id, "alice2");
    same_identity.oidc = Some(oidc.clone());
    conflict(store.create_user(&same_identity).await, "OIDC identity")?;
    invalid(store.create_user(&user(&acme.id, "")).await, "username")?;

    let mut changed = alice.clone();
    changed.disabled = true;
    changed.password_hash = None;
    changed.display_name = "Alice A.".into();
    let updated = store.update_user(&changed).await?;
    ensure!(updated.disabled && updated.password_hash.is_none() && updated.version == 2);
    conflict(store.update_user(&changed).await, "changed by someone else")?;
    let bob = store.create_user(&user(&acme.id, "bob")).await?;
    let mut rename = bob.clone();
    rename.username = "alice".into();
    conflict(store.update_user(&rename).await, "username")?;

    store.delete_user(&bob.id).await?;
    not_found(store.user(&bob.id).await, "user")?;
    Ok(())
}

async fn roles(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let other = store.create_tenant("other").await?;
    let alice = store.create_user(&user(&acme.id, "alice")).await?;
    let finance = store.create_space(&space(&acme.id, "finance")).await?;
    let foreign = store.create_space(&space(&other.id, "foreign")).await?;

    store.grant_system_role(&alice.id, "data_admin").await?;
    store
        .grant_system_role(&alice.id, "data_space_creator")
        .await?;
    conflict(
        store.grant_system_role(&alice.id, "data_admin").await,
        "system role",
    )?;
    invalid(store.grant_system_role(&alice.id, "").await, "role")?;
    not_found(
        store.grant_system_role("usr_missing", "data_admin").await,
        "user",
    )?;
    let roles: Vec<_> = store
        .system_roles(&alice.id)
        .await?
        .into_iter()
        .map(|r| r.role)
        .collect();
    ensure!(roles == ["data_admin", "data_space_creator"]);
    ensure!(store.revoke_system_role(&alice.id, "data_admin").await?);
    ensure!(!store.revoke_system_role(&alice.id, "data_admin").await?);

    store
        .grant_space_role(&alice.id, &finance.id, "owner")
        .await?;
    store
        .grant_space_role(&alice.id, &finance.id, "can_operate")
        .await?;
    conflict(
        store
            .grant_space_role(&alice.id, &finance.id, "owner")
            .await,
        "role in the data space",
    )?;
    invalid(
        store
            .grant_space_role(&alice.id, &foreign.id, "can_view")
            .await,
        "space_id",
    )?;
    not_found(
        store
            .grant_space_role(&alice.id, "sp_missing", "can_view")
            .await,
        "data space",
    )?;
    let page = store
        .space_roles_of_user(&alice.id, &PageRequest::first(10))
        .await?;
    ensure!(page.items.len() == 2 && page.next.is_none());
    // What one decision needs: the system roles, and those in the space asked about.
    let sorted = |mut names: Vec<String>| {
        names.sort();
        names
    };
    let held = store.held_roles(&alice.id, Some(&finance.id)).await?;
    ensure!(held.system == ["data_space_creator"]);
    ensure!(sorted(held.in_space) == ["can_operate", "owner"]);
    let held = store.held_roles(&alice.id, None).await?;
    ensure!(held.system == ["data_space_creator"] && held.in_space.is_empty());
    let held = store.held_roles(&alice.id, Some(&foreign.id)).await?;
    ensure!(held.in_space.is_empty());
    ensure!(store.held_roles("usr_missing", Some(&finance.id)).await? == Default::default());
    ensure!(
        store
            .revoke_space_role(&alice.id, &finance.id, "can_operate")
            .await?
    );

    // A space's role assignments go with it; so do a user's roles.
    let bob = store.create_user(&user(&acme.id, "bob")).await?;
    store
        .grant_space_role(&bob.id, &finance.id, "can_view")
        .await?;
    ensure!(
        store
            .space_members(&finance.id, &PageRequest::first(10))
            .await?
            .items
            .len()
            == 2
    );
    store.delete_space(&finance.id).await?;
    ensure!(
        store
            .space_roles_of_user(&bob.id, &PageRequest::first(10))
            .await?
            .items
            .is_empty()
    );
    store.grant_system_role(&bob.id, "data_admin").await?;
    store.delete_user(&bob.id).await?;
    ensure!(store.system_roles(&bob.id).await?.is_empty());
    Ok(())
}

async fn sessions(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let alice = store.create_user(&user(&acme.id, "alice")).await?;
    let now = now_ms();
    let token = TokenDigest::of("bearer-token-1");
    let session = store
        .create_session(&NewLoginSession {
            user_id: alice.id.clone(),
            token,
            expires_at_ms: now + 60_000,
        })
        .await?;
    ensure!(session.token == token && session.revoked_at_ms.is_none());
    ensure!(store.valid_session(&token, now).await? == session);
    ensure!(store.valid_session_user(&token, now).await? == (session.clone(), alice.clone()));
    // Expired at its expiry instant.
    not_found(
        store.valid_session(&token, now + 60_000).await,
        "login session",
    )?;
    not_found(
        store.valid_session(&TokenDigest::of("other"), now).await,
        "login session",
    )?;
    conflict(
        store
            .create_session(&NewLoginSession {
                user_id: alice.id.clone(),
                token,
                expires_at_ms: now + 1,
            })
            .await,
        "token digest",
    )?;

    // A disabled user's sessions are not valid.
    let mut disabled = alice.clone();
    disabled.disabled = true;
    let disabled = store.update_user(&disabled).await?;
    not_found(store.valid_session(&token, now).await, "login session")?;
    not_found(store.valid_session_user(&token, now).await, "login session")?;
    let mut enabled = disabled.clone();
    enabled.disabled = false;
    store.update_user(&enabled).await?;
    store.valid_session(&token, now).await?;

    store.revoke_session(&session.id, now + 5).await?;
    store.revoke_session(&session.id, now + 9).await?;
    ensure!(store.session(&session.id).await?.revoked_at_ms == Some(now + 5));
    not_found(store.valid_session(&token, now).await, "login session")?;
    not_found(store.valid_session_user(&token, now).await, "login session")?;

    for i in 0..3 {
        store
            .create_session(&NewLoginSession {
                user_id: alice.id.clone(),
                token: TokenDigest::of(&format!("t{i}")),
                expires_at_ms: now + 1_000 * i,
            })
            .await?;
    }
    ensure!(store.revoke_user_sessions(&alice.id, now).await? == 3);
    ensure!(store.revoke_user_sessions(&alice.id, now).await? == 0);
    let all = store
        .sessions_of_user(&alice.id, &PageRequest::first(10))
        .await?;
    ensure!(all.items.len() == 4);
    // t0 (expires now) and t1 (now + 1 s) are gone at now + 1 s.
    ensure!(store.purge_expired_sessions(now + 1_000).await? == 2);
    ensure!(
        store
            .sessions_of_user(&alice.id, &PageRequest::first(10))
            .await?
            .items
            .len()
            == 2
    );
    not_found(store.session("ses_missing").await, "login session")?;
    Ok(())
}

async fn tenant_settings(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let other = store.create_tenant("other").await?;
    ensure!(store.tenant_setting(&acme.id, "assist").await?.is_none());
    let on = serde_json::json!({"enabled": true, "region": "eu-west"});
    store.set_tenant_setting(&acme.id, "assist", &on).await?;
    ensure!(store.tenant_setting(&acme.id, "assist").await? == Some(on));
    // Setting it again replaces it; another tenant's settings are its own.
    let off = serde_json::json!({"enabled": false});
    store.set_tenant_setting(&acme.id, "assist", &off).await?;
    ensure!(store.tenant_setting(&acme.id, "assist").await? == Some(off));
    ensure!(store.tenant_setting(&other.id, "assist").await?.is_none());
    // Initializing keeps the first value, whoever comes second.
    let first = serde_json::json!({"key_id": "k1"});
    let got = store
        .init_tenant_setting(&acme.id, "parquet_key", &first)
        .await?;
    ensure!(got == first);
    let second = serde_json::json!({"key_id": "k2"});
    let got = store
        .init_tenant_setting(&acme.id, "parquet_key", &second)
        .await?;
    ensure!(got == first, "{got}");
    let missing = store.init_tenant_setting("tnt_nope", "x", &first).await;
    ensure!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    // An unknown tenant and a bad name are refused.
    let missing = store
        .set_tenant_setting("tnt_nope", "assist", &serde_json::json!(1))
        .await;
    ensure!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    let bad = store
        .set_tenant_setting(&acme.id, "", &serde_json::json!(1))
        .await;
    ensure!(matches!(bad, Err(Error::Invalid { .. })), "{bad:?}");
    // Data products: named, unique per tenant, 1 to 100 tasks.
    let product = |name: &str, tasks: Vec<String>| NewDataProduct {
        tenant_id: acme.id.clone(),
        name: name.into(),
        description: "Daily orders".into(),
        task_ids: tasks,
        created_by: "usr_1".into(),
    };
    let orders = store
        .create_data_product(&product("orders", vec!["task_1".into()]))
        .await?;
    ensure!(orders.task_ids == ["task_1"] && orders.tenant_id == acme.id);
    let taken = store
        .create_data_product(&product("orders", vec!["task_2".into()]))
        .await;
    ensure!(matches!(taken, Err(Error::Conflict(_))), "{taken:?}");
    let empty = store
        .create_data_product(&product("none", Vec::new()))
        .await;
    ensure!(matches!(empty, Err(Error::Invalid { .. })), "{empty:?}");
    let listed = store
        .data_products(&acme.id, &PageRequest::default())
        .await?;
    ensure!(listed.items == [orders]);
    // The settings go with their tenant.
    store.delete_tenant(&other.id).await?;
    Ok(())
}

async fn data_keys(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let key = |activate, byte| NewDataKey {
        tenant_id: acme.id.clone(),
        kek_id: "kms:key/1".into(),
        wrapped_key: vec![byte; 40],
        activate,
    };
    let v1 = store.add_data_key(&key(true, 1)).await?;
    ensure!(v1.version == 1 && v1.active);
    ensure!(
        !format!("{v1:?}").contains("[1, 1"),
        "the wrapped key is redacted"
    );
    let v2 = store.add_data_key(&key(false, 2)).await?;
    ensure!(v2.version == 2 && !v2.active);
    ensure!(store.active_data_key(&acme.id).await?.version == 1);
    let v3 = store.add_data_key(&key(true, 3)).await?;
    ensure!(v3.version == 3 && store.active_data_key(&acme.id).await?.version == 3);
    ensure!(!store.data_key(&acme.id, 1).await?.active);
    store.activate_data_key(&acme.id, 2).await?;
    let keys = store
        .data_keys(&acme.id, &PageRequest::first(10))
        .await?
        .items;
    let active: Vec<_> = keys
        .iter()
        .filter(|k| k.active)
        .map(|k| k.version)
        .collect();
    ensure!(active == [2], "exactly one active key: {active:?}");
    not_found(store.activate_data_key(&acme.id, 9).await, "data key")?;
    not_found(
        store
            .add_data_key(&NewDataKey {
                tenant_id: "tn_x".into(),
                ..key(false, 1)
            })
            .await,
        "tenant",
    )?;
    invalid(
        store
            .add_data_key(&NewDataKey {
                wrapped_key: Vec::new(),
                ..key(false, 1)
            })
            .await,
        "wrapped_key",
    )?;

    // The database itself allows one active key per tenant.
    let second_active = sqlx::query("UPDATE tenant_data_keys SET active = $1 WHERE version = 1")
        .bind(true)
        .execute(store.pool())
        .await;
    ensure!(second_active.is_err(), "a second active key was accepted");

    // Rewrap: atomic, and only from the expected key-encryption key.
    let rewrapped = store
        .rewrap_data_key(&acme.id, 1, "kms:key/1", "kms:key/2", &[9; 48])
        .await?;
    ensure!(rewrapped.kek_id == "kms:key/2" && rewrapped.wrapped_key == vec![9; 48]);
    ensure!(rewrapped.rewrapped_at_ms.is_some() && rewrapped.created_at_ms == v1.created_at_ms);
    conflict(
        store
            .rewrap_data_key(&acme.id, 1, "kms:key/1", "kms:key/3", &[7; 48])
            .await,
        "no longer wrapped",
    )?;
    ensure!(store.data_key(&acme.id, 1).await?.wrapped_key == vec![9; 48]);
    not_found(
        store
            .rewrap_data_key(&acme.id, 7, "kms:key/1", "kms:key/3", &[7; 48])
            .await,
        "data key",
    )?;
    conflict(store.delete_tenant(&acme.id).await, "still used")?;
    Ok(())
}

async fn gateways(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let finance = store.create_space(&space(&acme.id, "finance")).await?;
    let digest = TokenDigest::of("enroll-me");
    let new = NewGateway {
        space_id: finance.id.clone(),
        name: "dc-1".into(),
        enrollment: Some(digest),
        enrollment_expires_at_ms: Some(now_ms() + 600_000),
    };
    let gateway = store.create_gateway(&new).await?;
    ensure!(gateway.state == GatewayState::PendingEnrollment && gateway.tenant_id == acme.id);
    conflict(
        store
            .create_gateway(&NewGateway {
                enrollment: None,
                ..new.clone()
            })
            .await,
        "gateway with this name",
    )?;
    conflict(
        store
            .create_gateway(&NewGateway {
                name: "dc-2".into(),
                ..new.clone()
            })
            .await,
        "enrollment token digest",
    )?;
    not_found(
        store
            .create_gateway(&NewGateway {
                space_id: "sp_x".into(),
                ..new.clone()
            })
            .await,
        "data space",
    )?;
    ensure!(store.gateway_by_enrollment(&digest).await? == gateway);

    let mut enrolled = gateway.clone();
    enrolled.state = GatewayState::Active;
    enrolled.public_key = Some("pk".into());
    enrolled.enrollment = None;
    enrolled.enrollment_expires_at_ms = None;
    let enrolled = store.update_gateway(&enrolled).await?;
    ensure!(enrolled.version == 2 && enrolled.state == GatewayState::Active);
    not_found(store.gateway_by_enrollment(&digest).await, "gateway")?;
    conflict(
        store.update_gateway(&gateway).await,
        "changed by someone else",
    )?;

    let metrics = tidegate_metadata::MetricsReport {
        uptime_s: 5,
        running_tasks: 1,
        rows_total: 10,
        bytes_total: 100,
    };
    store
        .record_gateway_seen(&gateway.id, 1234, Some(&metrics))
        .await?;
    store.record_gateway_seen(&gateway.id, 1240, None).await?;
    let seen = store.gateway(&gateway.id).await?;
    ensure!(seen.last_seen_at_ms == Some(1240) && seen.metrics == Some(metrics));
    ensure!(seen.version == 2, "heartbeats do not bump the version");

    let mut outdated = seen.clone();
    outdated.state = GatewayState::Outdated {
        reason: "speaks only v1".into(),
    };
    ensure!(store.update_gateway(&outdated).await?.state == outdated.state);
    ensure!(
        store
            .gateways(&finance.id, &PageRequest::first(5))
            .await?
            .items
            .len()
            == 1
    );
    store.delete_gateway(&gateway.id).await?;
    not_found(store.gateway(&gateway.id).await, "gateway")?;
    Ok(())
}

async fn connections(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let finance = store.create_space(&space(&acme.id, "finance")).await?;
    let key = store
        .add_data_key(&NewDataKey {
            tenant_id: acme.id.clone(),
            kek_id: "kek".into(),
            wrapped_key: vec![1; 32],
            activate: true,
        })
        .await?;
    let sealed = SealedCredentials {
        data_key_version: key.version,
        ciphertext: vec![0xde, 0xad, 0xbe, 0xef],
    };
    let new = NewConnection {
        space_id: finance.id.clone(),
        name: "warehouse".into(),
        kind: "postgres".into(),
        settings: BTreeMap::from([
            ("host".into(), "db.internal".into()),
            ("port".into(), "5432".into()),
        ]),
        credentials: Some(sealed.clone()),
    };
    let connection = store.create_connection(&new).await?;
    ensure!(connection.credentials.as_ref() == Some(&sealed));
    ensure!(
        !format!("{connection:?}").contains("222, 173"),
        "ciphertext is redacted"
    );
    ensure!(store.connection(&connection.id).await? == connection);
    conflict(
        store.create_connection(&new).await,
        "connection with this name",
    )?;
    invalid(
        store
            .create_connection(&NewConnection {
                name: "other".into(),
                credentials: Some(SealedCredentials {
                    data_key_version: 99,
                    ciphertext: vec![1],
                }),
                ..new.clone()
            })
            .await,
        "credentials.data_key_version",
    )?;

    let mut changed = connection.clone();
    changed.credentials = None;
    changed
        .settings
        .insert("sslmode".into(), "verify-full".into());
    let updated = store.update_connection(&changed).await?;
    ensure!(updated.credentials.is_none() && updated.settings.len() == 3 && updated.version == 2);
    conflict(
        store.update_connection(&changed).await,
        "changed by someone else",
    )?;
    let page = store
        .connections(&finance.id, &PageRequest::first(10))
        .await?;
    ensure!(page.items == vec![updated]);
    store.delete_connection(&connection.id).await?;
    not_found(store.connection(&connection.id).await, "connection")?;
    Ok(())
}

async fn tasks_and_references(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let f = fixture(&store, "acme").await?;
    let task = store.task(&f.task_id).await?;
    ensure!(task.task_type == TaskType::FullLoad && task.tables.exclude == ["public.tmp_*"]);
    ensure!(task.schedule.as_deref() == Some("0 3 * * *"));
    conflict(
        store.create_task(&task_new(&f, "copy")).await,
        "data task with this name",
    )?;

    // References must exist and be of the same space.
    let mut missing = task_new(&f, "t2");
    missing.source_connection_id = "conn_missing".into();
    not_found(store.create_task(&missing).await, "connection")?;
    let g = fixture(&store, "other").await?;
    let mut foreign = task_new(&f, "t3");
    foreign.target_connection_id = g.target_id.clone();
    invalid(store.create_task(&foreign).await, "target_connection_id")?;
    let mut foreign_gateway = task_new(&f, "t4");
    foreign_gateway.gateway_id = g.gateway_id.clone();
    invalid(store.create_task(&foreign_gateway).await, "gateway_id")?;

    let mut changed = task.clone();
    changed.task_type = TaskType::ChangeDataCapture;
    changed.schedule = None;
    let updated = store.update_task(&changed).await?;
    ensure!(updated.task_type == TaskType::ChangeDataCapture && updated.version == 2);
    conflict(store.update_task(&changed).await, "changed by someone else")?;
    let mut bad = updated.clone();
    bad.source_connection_id = g.source_id.clone();
    invalid(store.update_task(&bad).await, "source_connection_id")?;

    // Deleting what a task uses is refused, with a message naming what uses it.
    conflict(store.delete_connection(&f.source_id).await, "data tasks")?;
    conflict(store.delete_gateway(&f.gateway_id).await, "data tasks")?;
    conflict(
        store.delete_space(&f.space_id).await,
        "gateways, connections or data tasks",
    )?;
    conflict(store.delete_tenant(&f.tenant_id).await, "data spaces")?;

    // Deleting the task takes its runs and snapshots; then the space can go.
    let run = store.create_run(&f.task_id).await?;
    conflict(store.delete_task(&f.task_id).await, "running run")?;
    store
        .transition_run(
            &run.id,
            TaskState::Starting,
            TaskState::Failed,
            Some("boom"),
        )
        .await?;
    store
        .add_schema_snapshot(&NewSchemaSnapshot {
            task_id: f.task_id.clone(),
            run_id: run.id.clone(),
            table: "public.t".into(),
            schema: serde_json::json!({"columns": []}),
        })
        .await?;
    store.delete_task(&f.task_id).await?;
    not_found(store.run(&run.id).await, "run")?;
    ensure!(
        store
            .schema_snapshots(&f.task_id, &PageRequest::first(5))
            .await?
            .items
            .is_empty()
    );
    not_found(store.delete_task(&f.task_id).await, "data task")?;
    store.delete_connection(&f.source_id).await?;
    store.delete_connection(&f.target_id).await?;
    store.delete_gateway(&f.gateway_id).await?;
    store.delete_space(&f.space_id).await?;
    Ok(())
}

fn task_new(f: &Fixture, name: &str) -> NewDataTask {
    task(&f.space_id, name, &f.source_id, &f.target_id, &f.gateway_id)
}

async fn runs_and_snapshots(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let f = fixture(&store, "acme").await?;
    let run = store.create_run(&f.task_id).await?;
    ensure!(run.state == TaskState::Starting && run.ended_at_ms.is_none() && run.tables.is_empty());
    conflict(
        store.create_run(&f.task_id).await,
        "starting or running run",
    )?;
    not_found(store.create_run("task_missing").await, "data task")?;

    let running = store
        .transition_run(&run.id, TaskState::Starting, TaskState::Running, None)
        .await?;
    ensure!(running.state == TaskState::Running && running.version == 2);
    // Compare-and-swap on the state: a second claim of the same transition loses.
    conflict(
        store
            .transition_run(&run.id, TaskState::Starting, TaskState::Running, None)
            .await,
        "is running, not starting",
    )?;
    let tables = BTreeMap::from([(
        "public.orders".to_owned(),
        TableRun {
            rows: 10,
            bytes: 1000,
            rows_expected: Some(20),
            state: TableState::Copying,
        },
    )]);
    store.record_run_tables(&run.id, &tables).await?;
    let failed = store
        .transition_run(
            &run.id,
            TaskState::Running,
            TaskState::Failed,
            Some("disk\nfull"),
        )
        .await?;
    ensure!(failed.ended_at_ms.is_some() && failed.error.as_deref() == Some("disk\nfull"));
    ensure!(failed.tables["public.orders"].rows == 10);

    // Failed: a new run may start, and the failed one cannot resume while it runs.
    let second = store.create_run(&f.task_id).await?;
    conflict(
        store
            .transition_run(&run.id, TaskState::Failed, TaskState::Starting, None)
            .await,
        "starting or running run",
    )?;
    store
        .transition_run(&second.id, TaskState::Starting, TaskState::Completed, None)
        .await?;
    let resumed = store
        .transition_run(&run.id, TaskState::Failed, TaskState::Starting, None)
        .await?;
    ensure!(resumed.ended_at_ms.is_none() && resumed.error.is_none());
    let runs = store.runs(&f.task_id, &PageRequest::first(10)).await?;
    ensure!(runs.items.len() == 2 && runs.items[0].id == run.id);

    for columns in [1, 2] {
        store
            .add_schema_snapshot(&NewSchemaSnapshot {
                task_id: f.task_id.clone(),
                run_id: run.id.clone(),
                table: "public.orders".into(),
                schema: serde_json::json!({ "columns": columns }),
            })
            .await?;
        // Distinct times, so "latest" is well defined.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let latest = store
        .latest_schema_snapshot(&f.task_id, "public.orders")
        .await?;
    ensure!(latest.schema == serde_json::json!({ "columns": 2 }));
    not_found(
        store
            .latest_schema_snapshot(&f.task_id, "public.none")
            .await,
        "schema snapshot of table",
    )?;
    let g = fixture(&store, "other").await?;
    invalid(
        store
            .add_schema_snapshot(&NewSchemaSnapshot {
                task_id: g.task_id.clone(),
                run_id: run.id.clone(),
                table: "x".into(),
                schema: serde_json::json!({}),
            })
            .await,
        "run_id",
    )?;
    Ok(())
}

/// Change data capture runs keep where they stand; the latest idle run of each capture task
/// is found for slot inspection, and nothing else is.
async fn capture_runs(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let f = fixture(&store, "acme").await?;
    let mut capture = store.task(&f.task_id).await?;
    capture.task_type = TaskType::ChangeDataCapture;
    let capture = store.update_task(&capture).await?;
    let full_load = store
        .create_task(&task(
            &f.space_id,
            "nightly",
            &f.source_id,
            &f.target_id,
            &f.gateway_id,
        ))
        .await?;
    ensure!(store.idle_capture_runs(&f.tenant_id).await?.is_empty());

    let first = store.create_run(&capture.id).await?;
    ensure!(first.replication.is_none());
    let on_gateway = store.active_runs_on_gateway(&f.gateway_id).await?;
    ensure!(on_gateway.len() == 1 && on_gateway[0].id == first.id);
    ensure!(store.active_runs_on_gateway("gw_other").await?.is_empty());
    let reported = RunReplication {
        phase: Some(ReplicationPhase::Streaming),
        checkpoint_lsn: Some("0/16B3748".into()),
        source_lsn: Some("0/16B3800".into()),
        lag_bytes: 184,
        lag_ms: 12,
        load_rows: 1000,
        transactions: 3,
        rows: 7,
        reported_at_ms: Some(1),
        ..RunReplication::default()
    };
    store.record_run_replication(&first.id, &reported).await?;
    ensure!(store.run(&first.id).await?.replication.as_ref() == Some(&reported));
    not_found(
        store.record_run_replication("run_missing", &reported).await,
        "run",
    )?;
    // Running: not idle.
    store
        .transition_run(&first.id, TaskState::Starting, TaskState::Running, None)
        .await?;
    ensure!(store.idle_capture_runs(&f.tenant_id).await?.is_empty());
    store
        .transition_run(&first.id, TaskState::Running, TaskState::Stopped, None)
        .await?;
    ensure!(
        store
            .active_runs_on_gateway(&f.gateway_id)
            .await?
            .is_empty()
    );
    let idle = store.idle_capture_runs(&f.tenant_id).await?;
    ensure!(idle.len() == 1 && idle[0].id == first.id && idle[0].replication == Some(reported));

    // Only the latest run of a task counts; full loads and other tenants never do.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let second = store.create_run(&capture.id).await?;
    ensure!(store.idle_capture_runs(&f.tenant_id).await?.is_empty());
    store
        .transition_run(
            &second.id,
            TaskState::Starting,
            TaskState::Failed,
            Some("gone"),
        )
        .await?;
    let loaded = store.create_run(&full_load.id).await?;
    store
        .transition_run(&loaded.id, TaskState::Starting, TaskState::Stopped, None)
        .await?;
    let other = fixture(&store, "other").await?;
    let idle = store.idle_capture_runs(&f.tenant_id).await?;
    ensure!(idle.len() == 1 && idle[0].id == second.id, "{idle:?}");
    ensure!(store.idle_capture_runs(&other.tenant_id).await?.is_empty());
    Ok(())
}

async fn pagination(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            store
                .create_space(&space(&acme.id, &format!("space {i}")))
                .await?
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut request = PageRequest::first(3);
    let mut pages = 0;
    loop {
        let page = store.spaces(&acme.id, &request).await?;
        pages += 1;
        ensure!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|s| s.id));
        match page.next {
            Some(next) => request = PageRequest::after(3, next),
            None => break,
        }
    }
    ensure!(pages == 3, "7 items in pages of 3: {pages} pages");
    let mut expected = created.clone();
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    ensure!(got == expected, "every item exactly once");

    // Exactly one full page: no next cursor.
    let page = store.spaces(&acme.id, &PageRequest::first(7)).await?;
    ensure!(page.items.len() == 7 && page.next.is_none());
    invalid(
        store.spaces(&acme.id, &PageRequest::first(0)).await,
        "limit",
    )?;
    invalid(
        store
            .spaces(&acme.id, &PageRequest::first(MAX_PAGE_LIMIT + 1))
            .await,
        "limit",
    )?;
    invalid(
        store
            .spaces(
                &acme.id,
                &PageRequest::after(3, tidegate_metadata::Cursor::new("garbage!")),
            )
            .await,
        "after",
    )?;

    // Tenants, users and data keys page too.
    for i in 0..3 {
        store.create_user(&user(&acme.id, &format!("u{i}"))).await?;
        store
            .add_data_key(&NewDataKey {
                tenant_id: acme.id.clone(),
                kek_id: "kek".into(),
                wrapped_key: vec![i; 8],
                activate: false,
            })
            .await?;
    }
    let users = store.users(&acme.id, &PageRequest::first(2)).await?;
    let rest = store
        .users(
            &acme.id,
            &PageRequest::after(2, users.next.clone().expect("a next page")),
        )
        .await?;
    ensure!(users.items.len() == 2 && rest.items.len() == 1 && rest.next.is_none());
    let keys = store.data_keys(&acme.id, &PageRequest::first(2)).await?;
    let more = store
        .data_keys(
            &acme.id,
            &PageRequest::after(2, keys.next.clone().expect("a next page")),
        )
        .await?;
    ensure!(keys.items[0].version == 1 && more.items.len() == 1 && more.items[0].version == 3);
    store.create_tenant("beta").await?;
    let tenants = store.tenants(&PageRequest::first(1)).await?;
    ensure!(tenants.items.len() == 1 && tenants.next.is_some());
    Ok(())
}

async fn audit_log_is_append_only(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let acme = store.create_tenant("acme").await?;
    let event = |i: i64, actor: &str, action: &str| NewAuditEvent {
        at_ms: 1_000 + i,
        tenant_id: acme.id.clone(),
        space_id: (i % 2 == 0).then(|| "sp_even".to_owned()),
        actor: actor.into(),
        action: action.into(),
        target_kind: "connection".into(),
        target_id: Some(format!("conn_{i}")),
        source_addr: Some("192.0.2.7".into()),
        outcome: if i == 3 {
            AuditOutcome::Denied
        } else {
            AuditOutcome::Success
        },
        detail: serde_json::json!({ "i": i, "note": "names only" }),
    };
    let mut appended = Vec::new();
    for i in 0..6 {
        let actor = if i < 4 { "alice" } else { "bob" };
        let action = if i % 3 == 0 {
            "connection.delete"
        } else {
            "connection.create"
        };
        appended.push(store.append_audit(&event(i, actor, action)).await?);
    }
    store
        .append_audit(&NewAuditEvent {
            tenant_id: "tn_other".into(),
            ..event(0, "mallory", "x")
        })
        .await?;
    invalid(store.append_audit(&event(9, "", "x")).await, "actor")?;

    let all = store
        .audit_events(&AuditFilter::tenant(&acme.id), &PageRequest::first(100))
        .await?;
    ensure!(all.items == appended, "the tenant's events, in time order");
    let filter = AuditFilter {
        actor: Some("alice".into()),
        action: Some("connection.create".into()),
        ..AuditFilter::tenant(&acme.id)
    };
    let by_alice = store
        .audit_events(&filter, &PageRequest::first(100))
        .await?;
    ensure!(
        by_alice
            .items
            .iter()
            .map(|e| e.event.at_ms)
            .collect::<Vec<_>>()
            == [1_001, 1_002]
    );
    let filter = AuditFilter {
        space_id: Some("sp_even".into()),
        from_ms: Some(1_001),
        until_ms: Some(1_004),
        ..AuditFilter::tenant(&acme.id)
    };
    let ranged = store
        .audit_events(&filter, &PageRequest::first(100))
        .await?;
    ensure!(
        ranged
            .items
            .iter()
            .map(|e| e.event.at_ms)
            .collect::<Vec<_>>()
            == [1_002]
    );
    let first = store
        .audit_events(&AuditFilter::tenant(&acme.id), &PageRequest::first(4))
        .await?;
    let second = store
        .audit_events(
            &AuditFilter::tenant(&acme.id),
            &PageRequest::after(4, first.next.clone().expect("more")),
        )
        .await?;
    ensure!(first.items.len() == 4 && second.items.len() == 2 && second.next.is_none());
    ensure!(second.items[1].event.outcome == AuditOutcome::Success);
    ensure!(appended[3].event.outcome == AuditOutcome::Denied);

    let mut export = Vec::new();
    let count = store
        .export_audit(&AuditFilter::tenant(&acme.id), &mut export)
        .await?;
    ensure!(count == 6);
    let lines: Vec<serde_json::Value> = String::from_utf8(export)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(lines.len() == 6 && lines[3]["outcome"] == "denied" && lines[0]["detail"]["i"] == 0);

    // The database itself refuses to change or remove audit events.
    let mut refused = vec![
        "UPDATE audit_log SET actor = 'someone else'",
        "UPDATE audit_log SET detail = '{}' WHERE at_ms = 1000",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE at_ms = 1000",
    ];
    if store.backend() == Backend::Postgres {
        refused.push("TRUNCATE audit_log");
    }
    for sql in refused {
        let result = sqlx::query(sql).execute(store.pool()).await;
        match result {
            Err(sqlx::Error::Database(e)) if e.message().contains("append-only") => {}
            other => anyhow::bail!("{sql} was not refused: {other:?}"),
        }
    }
    let after = store
        .audit_events(&AuditFilter::tenant(&acme.id), &PageRequest::first(100))
        .await?;
    ensure!(after.items == appended, "nothing changed");
    Ok(())
}

/// A `WriteTx` commits its writes together or not at all, and others see nothing before the
/// commit; writers outside it wait their turn rather than fail.
async fn writes_commit_together(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let f = fixture(&store, "acme").await?;
    let audit = |action: &str, target: &str| NewAuditEvent {
        at_ms: now_ms(),
        tenant_id: f.tenant_id.clone(),
        space_id: Some(f.space_id.clone()),
        actor: "alice".into(),
        action: action.into(),
        target_kind: "connection".into(),
        target_id: Some(target.into()),
        source_addr: None,
        outcome: AuditOutcome::Success,
        detail: serde_json::Value::Null,
    };
    let events = async || -> Result<Vec<String>> {
        let page = store
            .audit_events(&AuditFilter::tenant(&f.tenant_id), &PageRequest::first(100))
            .await?;
        Ok(page.items.into_iter().map(|e| e.event.action).collect())
    };
    let new = |name: &str| NewConnection {
        space_id: f.space_id.clone(),
        name: name.into(),
        kind: "postgres".into(),
        settings: BTreeMap::new(),
        credentials: None,
    };

    // Committed: the connection, its change and the event, all at once.
    let mut tx = store.begin_write().await?;
    let created = tx.create_connection(&new("warehouse")).await?;
    not_found(store.connection(&created.id).await, "connection")?;
    ensure!(
        tx.connection(&created.id).await? == created,
        "it sees its own writes"
    );
    ensure!(tx.task(&f.task_id).await? == store.task(&f.task_id).await?);
    let renamed = tx
        .update_connection(&tidegate_metadata::ConnectionRecord {
            name: "warehouse 2".into(),
            ..created.clone()
        })
        .await?;
    ensure!(renamed.version == 2);
    tx.append_audit(&audit("connection.create", &created.id))
        .await?;
    // A writer outside the transaction waits for it instead of failing.
    let task = store.task(&f.task_id).await?;
    let outside = store.update_task(&task);
    let (committed, outside) = tokio::join!(tx.commit(), outside);
    committed?;
    ensure!(outside?.version == 2);
    ensure!(store.connection(&created.id).await? == renamed);
    ensure!(events().await? == ["connection.create"]);

    // Dropped: nothing happened.
    let mut tx = store.begin_write().await?;
    let dropped = tx.create_connection(&new("scratch")).await?;
    tx.delete_task(&f.task_id).await?;
    tx.append_audit(&audit("connection.create", &dropped.id))
        .await?;
    drop(tx);
    not_found(store.connection(&dropped.id).await, "connection")?;
    store.task(&f.task_id).await?;
    ensure!(events().await? == ["connection.create"]);

    // A refused write fails as the store's method does; the transaction is then dropped.
    let mut tx = store.begin_write().await?;
    conflict(
        tx.create_connection(&new("warehouse 2")).await,
        "already exists",
    )?;
    drop(tx);
    let mut tx = store.begin_write().await?;
    conflict(tx.delete_connection(&f.source_id).await, "data tasks")?;
    drop(tx);
    let mut tx = store.begin_write().await?;
    let task = store.task(&f.task_id).await?;
    tx.update_task(&tidegate_metadata::DataTaskRecord {
        schedule: Some("0 3 * * *".into()),
        ..task.clone()
    })
    .await?;
    tx.delete_connection(&created.id).await?;
    tx.append_audit(&audit("connection.delete", &created.id))
        .await?;
    tx.commit().await?;
    conflict(store.update_task(&task).await, "changed by someone else")?;
    not_found(store.connection(&created.id).await, "connection")?;
    ensure!(events().await? == ["connection.create", "connection.delete"]);
    Ok(())
}

async fn weird_names_round_trip(db: &TestDb) -> Result<()> {
    let store = db.open().await;
    let names = [
        "O'Brien \"quoted\" `tick`",
        "Robert'); DROP TABLE tenants;--",
        "1 OR 1=1 -- $1 ? :name @x %_ \\ \\\\",
        "Zürich – 東京 – Ελλάδα – 🚀🦀",
        "  leading and trailing spaces  ",
        "\u{200b}zero\u{fe0f}width\u{2028}",
    ];
    for name in names {
        let tenant = store.create_tenant(name).await?;
        ensure!(
            store.tenant(&tenant.id).await?.name == name,
            "tenant {name:?}"
        );
        let space = store
            .create_space(&NewDataSpace {
                tenant_id: tenant.id.clone(),
                name: name.into(),
                description: format!("{name}\n{name}"),
            })
            .await?;
        let read = store.space(&space.id).await?;
        ensure!(read.name == name && read.description == format!("{name}\n{name}"));
        let user = store.create_user(&user(&tenant.id, name)).await?;
        ensure!(store.user_by_username(&tenant.id, name).await? == user);
        let connection = store
            .create_connection(&NewConnection {
                space_id: space.id.clone(),
                name: name.into(),
                kind: "postgres".into(),
                settings: BTreeMap::from([(name.to_owned(), name.to_owned())]),
                credentials: None,
            })
            .await?;
        ensure!(store.connection(&connection.id).await?.settings[name] == name);
        store.grant_space_role(&user.id, &space.id, name).await?;
        let event = store
            .append_audit(&NewAuditEvent {
                at_ms: 1,
                tenant_id: tenant.id.clone(),
                space_id: Some(space.id.clone()),
                actor: name.into(),
                action: name.into(),
                target_kind: name.into(),
                target_id: Some(name.into()),
                source_addr: None,
                outcome: AuditOutcome::Failure,
                detail: serde_json::json!({ name: name }),
            })
            .await?;
        let filter = AuditFilter {
            actor: Some(name.into()),
            action: Some(name.into()),
            ..AuditFilter::tenant(&tenant.id)
        };
        ensure!(
            store
                .audit_events(&filter, &PageRequest::first(5))
                .await?
                .items
                == vec![event]
        );
    }
    // Control characters are refused in names, never stored mangled.
    invalid(store.create_tenant("nul\0byte").await, "name")?;
    ensure!(store.tenants(&PageRequest::first(100)).await?.items.len() == names.len());
    Ok(())
}

async fn two_control_planes_race(db: &TestDb) -> Result<()> {
    // Two stores on one database, as two control planes would have.
    let (a, b) = (db.open().await, db.open().await);
    let f = fixture(&a, "acme").await?;
    for _ in 0..5 {
        let (ra, rb) = tokio::join!(a.create_run(&f.task_id), b.create_run(&f.task_id));
        let winners: Vec<_> = [ra, rb].into_iter().filter_map(Result::ok).collect();
        ensure!(winners.len() == 1, "exactly one run starts");
        let run = &winners[0];
        let (ta, tb) = tokio::join!(
            a.transition_run(&run.id, TaskState::Starting, TaskState::Running, None),
            b.transition_run(&run.id, TaskState::Starting, TaskState::Running, None),
        );
        ensure!(ta.is_ok() != tb.is_ok(), "exactly one claims the run");
        a.transition_run(&run.id, TaskState::Running, TaskState::Completed, None)
            .await?;
    }
    let task = a.task(&f.task_id).await?;
    let mut by_a = task.clone();
    by_a.name = "renamed by a".into();
    let mut by_b = task.clone();
    by_b.name = "renamed by b".into();
    let (ua, ub) = tokio::join!(a.update_task(&by_a), b.update_task(&by_b));
    ensure!(ua.is_ok() != ub.is_ok(), "exactly one update wins");
    let key = NewDataKey {
        tenant_id: f.tenant_id.clone(),
        kek_id: "kek".into(),
        wrapped_key: vec![1; 32],
        activate: true,
    };
    let (ka, kb) = tokio::join!(a.add_data_key(&key), b.add_data_key(&key));
    for result in [&ka, &kb] {
        if let Err(e) = result {
            ensure!(matches!(e, Error::Conflict(_)) && !e.is_retryable(), "{e}");
        }
    }
    let keys = a
        .data_keys(&f.tenant_id, &PageRequest::first(10))
        .await?
        .items;
    ensure!(keys.iter().filter(|k| k.active).count() == 1);
    Ok(())
}

async fn open_errors_hide_the_url(db: &TestDb) -> Result<()> {
    let error = SqlStore::open(&db.bad_url)
        .await
        .expect_err("the URL cannot be opened");
    ensure!(matches!(error, Error::Database { .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    ensure!(
        !shown.contains(SECRET),
        "the error shows the URL's secret: {shown}"
    );
    ensure!(!format!("{:?}", db.options).contains("@127.0.0.1"));
    let store = db.open().await;
    ensure!(!format!("{store:?}").contains("127.0.0.1"));
    Ok(())
}
