//! Connections: how a gateway reaches a source or a target. Their secrets are write-only:
//! sealed under the tenant's data key (object id = connection id) before they are stored,
//! opened only to build the [`ConnectionSpec`] of a command to a gateway, and shown by name
//! only.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidegate_metadata::{
    ConnectionRecord, MetadataStore, NewConnection, Page, SealedCredentials, WriteTx, validate_name,
};
use tidegate_proto::{Command, CommandOutcome, ConnectionSpec, SecretMap, SecretString};
use tidegate_rbac::Action;

use super::{ApiError, Body, Ctx, ListQuery, Query, page_of};
use crate::Shared;

/// The settings key under which the names (never the values) of a connection's secrets are
/// kept, so that views can list them without opening the sealed credentials. Settings a
/// client sends may not start with [`RESERVED_PREFIX`].
const SECRET_NAMES: &str = "tidegate:secret_names";
const RESERVED_PREFIX: &str = "tidegate:";

/// How long a gateway has to test a connection.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection kinds and their required settings.
const KINDS: &[(&str, &[&str])] = &[
    ("sqlite", &["path"]),
    ("local", &["root"]),
    ("postgres", &["host", "database", "user"]),
    // Either the settings driver, server, port, database, user (+ secret password) or a single
    // secret connection_string: the gateway checks which when it opens the connection.
    ("odbc", &[]),
    ("s3", &["bucket"]),
];

/// A connection as the API shows it: secrets by name only.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ConnectionView {
    id: String,
    space_id: String,
    name: String,
    kind: String,
    settings: BTreeMap<String, String>,
    /// The names of its secrets; their values are never shown.
    secret_names: Vec<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    version: i64,
}

impl From<ConnectionRecord> for ConnectionView {
    fn from(c: ConnectionRecord) -> Self {
        let (settings, secret_names) = split_settings(c.settings);
        Self {
            id: c.id,
            space_id: c.space_id,
            name: c.name,
            kind: c.kind,
            settings,
            secret_names,
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
            version: c.version,
        }
    }
}

/// The settings as the client gave them, and the names of the secrets.
fn split_settings(
    mut settings: BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let names = settings
        .remove(SECRET_NAMES)
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    settings.retain(|k, _| !k.starts_with(RESERVED_PREFIX));
    (settings, names)
}

/// Refuses an unknown kind, a missing required setting, a reserved setting name and a storage
/// prefix that could escape its bucket or directory.
fn check_settings(kind: &str, settings: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let Some((_, required)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<_> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err(ApiError::bad_request(format!(
            "unknown connection kind {kind:?}; known kinds: {}",
            known.join(", ")
        )));
    };
    for setting in *required {
        if settings.get(*setting).is_none_or(|v| v.is_empty()) {
            return Err(ApiError::bad_request(format!(
                "a {kind} connection needs the setting {setting:?}"
            )));
        }
    }
    if let Some(key) = settings.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
        return Err(ApiError::bad_request(format!(
            "setting {key:?}: names starting with {RESERVED_PREFIX:?} are reserved"
        )));
    }
    if let Some(encryption) = settings.get("encryption")
        && (encryption != "tenant" || !matches!(kind, "s3" | "local"))
    {
        return Err(ApiError::bad_request(format!(
            "setting \"encryption\": {encryption:?} is not known; \"tenant\" (Parquet modular \
             encryption under the tenant's key) applies to s3 and local targets"
        )));
    }
    if let Some(problem) = settings
        .get("prefix")
        .and_then(|p| tidegate_proto::storage_prefix_problem(p))
    {
        return Err(ApiError::bad_request(format!(
            "setting \"prefix\": {problem}"
        )));
    }
    Ok(())
}

/// Keeps the names of `secrets` (never their values) among the settings, for the views.
fn note_secret_names(settings: &mut BTreeMap<String, String>, secrets: &SecretMap) {
    settings.remove(SECRET_NAMES);
    if !secrets.is_empty() {
        let names: Vec<&str> = secrets.names().collect();
        settings.insert(SECRET_NAMES.to_owned(), json!(names).to_string());
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateConnection {
    space_id: Option<String>,
    name: String,
    kind: String,
    #[serde(default)]
    settings: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretString>,
}

#[utoipa::path(
    operation_id = "connections_create",
    post,
    path = "/api/v1/connections",
    tag = "connections",
    request_body = CreateConnection,
    responses((status = 201, description = "The connection, secrets by name only", body = ConnectionView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("connection_create")))
)]
pub(crate) async fn create(
    ctx: Ctx,
    Body(req): Body<CreateConnection>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    let shared = &ctx.shared;
    let (_, space) = ctx
        .in_space(req.space_id.as_deref(), Action::ConnectionCreate)
        .await?;
    validate_name("name", &req.name)?;
    check_settings(&req.kind, &req.settings)?;
    let mut secrets = SecretMap::new();
    for (name, value) in req.secrets {
        validate_name("secrets", &name)?;
        secrets.insert(name, value);
    }
    let mut settings = req.settings;
    note_secret_names(&mut settings, &secrets);
    let mut tx = shared.store.begin_write().await?;
    let mut connection = tx
        .create_connection(&NewConnection {
            space_id: space.id,
            name: req.name,
            kind: req.kind,
            settings,
            credentials: None,
        })
        .await?;
    ctx.note(|n| n.target_id = Some(connection.id.clone()));
    // The sealed blob is bound to the connection's id, which the store has just chosen; both
    // are committed together, or neither.
    if !secrets.is_empty() {
        connection.credentials = Some(shared.seal_for(&connection.id, &secrets)?);
        connection = tx.update_connection(&connection).await?;
    }
    ctx.commit(tx).await?;
    Ok((StatusCode::CREATED, Json(connection.into())))
}

#[utoipa::path(
    operation_id = "connections_list",
    get,
    path = "/api/v1/connections",
    tag = "connections",
    params(ListQuery),
    responses((status = 200, description = "A page of connections", body = Page<ConnectionView>), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("connection_read")))
)]
pub(crate) async fn list(
    ctx: Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<ConnectionView>>, ApiError> {
    let shared = &ctx.shared;
    let (_, space) = ctx
        .in_space(q.space_id.as_deref(), Action::ConnectionRead)
        .await?;
    let page = shared.store.connections(&space.id, &q.page()).await?;
    Ok(page_of(page, ConnectionView::from))
}

#[utoipa::path(
    operation_id = "connections_show",
    get,
    path = "/api/v1/connections/{id}",
    tag = "connections",
    params(("id" = String, Path, description = "The connection's id")),
    responses((status = 200, description = "The connection, secrets by name only", body = ConnectionView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("connection_read")))
)]
pub(crate) async fn show(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<ConnectionView>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let connection = shared.connection(&id).await?;
    ctx.check(&caller, Action::ConnectionRead, Some(&connection.space_id))
        .await?;
    Ok(Json(connection.into()))
}

/// A change to a connection. Absent fields stay as they are; `settings`, when present,
/// replaces every setting; `secrets` sets the secrets it names and removes those given as
/// `null`, keeping the others. The kind of a connection does not change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateConnection {
    name: Option<String>,
    settings: Option<BTreeMap<String, String>>,
    /// Secrets to set (a string) or remove (`null`), by name.
    #[serde(default)]
    #[schema(value_type = Object)]
    secrets: BTreeMap<String, Option<SecretString>>,
    /// The version the change was made against; a newer stored version refuses it (409).
    version: Option<i64>,
}

#[utoipa::path(
    operation_id = "connections_update",
    patch,
    path = "/api/v1/connections/{id}",
    tag = "connections",
    params(("id" = String, Path, description = "The connection's id")),
    request_body = UpdateConnection,
    responses((status = 200, description = "The connection changed", body = ConnectionView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("connection_update")))
)]
pub(crate) async fn update(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<UpdateConnection>,
) -> Result<Json<ConnectionView>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let connection = shared.connection(&id).await?;
    ctx.check(
        &caller,
        Action::ConnectionUpdate,
        Some(&connection.space_id),
    )
    .await?;
    if let Some(name) = &req.name {
        validate_name("name", name)?;
    }
    if let Some(settings) = &req.settings {
        check_settings(&connection.kind, settings)?;
    }
    for name in req.secrets.keys() {
        validate_name("secrets", name)?;
    }
    let changed = ctx
        .change(&id, req.version, connection, |c| {
            changed_connection(shared, c, &req)
        })
        .await?;
    Ok(Json(changed.into()))
}

impl super::Versioned for ConnectionRecord {
    fn version(&self) -> i64 {
        self.version
    }

    async fn read(tx: &mut WriteTx, id: &str) -> Result<Self, tidegate_metadata::Error> {
        tx.connection(id).await
    }

    async fn write(tx: &mut WriteTx, changed: &Self) -> Result<Self, tidegate_metadata::Error> {
        tx.update_connection(changed).await
    }
}

/// `connection` with the change `req` applied (validated already): secrets opened, changed
/// and sealed again only if the change names some.
fn changed_connection(
    shared: &Shared,
    mut connection: ConnectionRecord,
    req: &UpdateConnection,
) -> Result<ConnectionRecord, ApiError> {
    if let Some(name) = &req.name {
        connection.name.clone_from(name);
    }
    let (mut settings, names) = split_settings(connection.settings.clone());
    if let Some(new) = &req.settings {
        settings.clone_from(new);
    }
    if req.secrets.is_empty() {
        if !names.is_empty() {
            settings.insert(SECRET_NAMES.to_owned(), json!(names).to_string());
        }
    } else {
        let mut secrets = shared.open(&connection)?;
        for (name, value) in &req.secrets {
            match value {
                Some(value) => secrets.insert(name.clone(), value.clone()),
                None => {
                    secrets.remove(name);
                }
            }
        }
        note_secret_names(&mut settings, &secrets);
        connection.credentials = if secrets.is_empty() {
            None
        } else {
            Some(shared.seal_for(&connection.id, &secrets)?)
        };
    }
    connection.settings = settings;
    Ok(connection)
}

/// Deletes a connection no task uses.
#[utoipa::path(
    operation_id = "connections_delete",
    delete,
    path = "/api/v1/connections/{id}",
    tag = "connections",
    params(("id" = String, Path, description = "The connection's id")),
    responses((status = 204, description = "Deleted"), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("connection_delete")))
)]
pub(crate) async fn delete(ctx: Ctx, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let connection = shared.connection(&id).await?;
    ctx.check(
        &caller,
        Action::ConnectionDelete,
        Some(&connection.space_id),
    )
    .await?;
    let mut tx = shared.store.begin_write().await?;
    tx.delete_connection(&connection.id).await?;
    ctx.commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestRequest {
    gateway_id: String,
}

/// Asks a gateway of the connection's space to open the connection and close it again.
#[utoipa::path(
    operation_id = "connections_test",
    post,
    path = "/api/v1/connections/{id}/test",
    tag = "connections",
    params(("id" = String, Path, description = "The connection's id")),
    request_body = TestRequest,
    responses((status = 200, description = "Whether the gateway reached the database", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("connection_test")))
)]
pub(crate) async fn test(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<TestRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let connection = shared.connection(&id).await?;
    ctx.check(&caller, Action::ConnectionTest, Some(&connection.space_id))
        .await?;
    ctx.note(|n| n.detail = json!({"gateway_id": req.gateway_id}));
    let gateway = shared.gateway(&req.gateway_id).await?;
    if gateway.space_id != connection.space_id {
        return Err(ApiError::bad_request(
            "gateway_id must name a gateway of the connection's data space",
        ));
    }
    let spec = shared.spec(connection)?;
    let result = shared
        .sessions
        .command(&gateway.id, Command::TestConnection(spec), TEST_TIMEOUT)
        .await
        .map_err(ApiError::conflict)?;
    Ok(Json(match result.outcome {
        Ok(CommandOutcome::ConnectionOk { server }) => {
            json!({"connection_id": id, "gateway_id": gateway.id, "ok": true, "server": server})
        }
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the gateway gave an unexpected answer",
            ));
        }
        Err(report) => {
            json!({"connection_id": id, "gateway_id": gateway.id, "ok": false, "error": report.message})
        }
    }))
}

impl Shared {
    /// A connection of this tenant; 404 otherwise.
    pub(crate) async fn connection(&self, id: &str) -> Result<ConnectionRecord, ApiError> {
        let connection = self.store.connection(id).await?;
        if connection.tenant_id != self.tenant_id {
            return Err(ApiError::not_found(format!("connection {id} not found")));
        }
        Ok(connection)
    }

    /// `secrets` sealed under the tenant's active data key, bound to the connection's id.
    fn seal_for(
        &self,
        connection_id: &str,
        secrets: &SecretMap,
    ) -> Result<SealedCredentials, ApiError> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(secrets).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        let ciphertext = self
            .keyring
            .seal(connection_id, &plain)
            .map_err(|e| ApiError::bad_request(format!("secrets: {e}")))?;
        Ok(SealedCredentials {
            data_key_version: i64::from(self.keyring.active_version()),
            ciphertext,
        })
    }

    /// The connection's secrets, opened: only to send them to a gateway, or to change some of
    /// them and seal them again.
    fn open(&self, c: &ConnectionRecord) -> Result<SecretMap, ApiError> {
        let Some(sealed) = &c.credentials else {
            return Ok(SecretMap::new());
        };
        let opened = self.keyring.open(&c.id, &sealed.ciphertext).map_err(|e| {
            tracing::error!(message = "credentials did not open", connection = %c.id, error = %e);
            ApiError::internal(format!(
                "the credentials of connection {} could not be opened",
                c.id
            ))
        })?;
        serde_json::from_slice(opened.expose()).map_err(|_| {
            ApiError::internal(format!(
                "the credentials of connection {} are malformed",
                c.id
            ))
        })
    }

    /// What a gateway needs to open the connection: its settings and its secrets, opened.
    pub(crate) fn spec(&self, c: ConnectionRecord) -> Result<ConnectionSpec, ApiError> {
        let secrets = self.open(&c)?;
        let (settings, _) = split_settings(c.settings);
        Ok(ConnectionSpec {
            id: c.id,
            kind: c.kind,
            settings,
            secrets,
        })
    }
}
