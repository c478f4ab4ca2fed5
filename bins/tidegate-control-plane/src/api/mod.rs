//! The REST API and the gateway connect endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tidegate_auth::{EnrollmentToken, PublicKey};
use tidegate_metadata::{
    Connection, ConnectionView, DataTask, Gateway, GatewayState, TableSelection, TaskRun,
    TaskState, validate_name,
};
use tidegate_proto::{
    Command, CommandOutcome, ConnectionSpec, SecretMap, SecretString, TableState, TaskKind,
    TaskSpec,
};
use tidegate_rbac::{Action, Scope};

use crate::Shared;
use crate::tls::TlsInfo;

/// Largest JSON body accepted.
const MAX_BODY: usize = 64 * 1024;

/// How long a gateway has to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// The casbin subject of the i-th configured operator token.
pub(crate) fn operator_subject(i: usize) -> String {
    format!("operator:{i}")
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/gateways", post(create_gateway).get(list_gateways))
        .route("/api/v1/gateways/enroll", post(enroll_gateway))
        .route("/api/v1/gateways/{id}", get(get_gateway))
        .route(
            "/api/v1/connections",
            post(create_connection).get(list_connections),
        )
        .route("/api/v1/tasks", post(create_task))
        .route("/api/v1/tasks/{id}", get(get_task))
        .route("/api/v1/tasks/{id}/runs", post(start_run))
        .route("/api/v1/tasks/{id}/stop", post(stop_task))
        .route("/api/v1/runs/{id}", get(get_run))
        .route("/api/v1/runs/{id}/resume", post(resume_run))
        .route("/v1/gateway/connect", get(gateway_connect))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// A JSON error: `{"error": {"code": ..., "message": ...}}`. Messages never hold secrets.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        (self.status, body).into_response()
    }
}

impl From<tidegate_metadata::Error> for ApiError {
    fn from(e: tidegate_metadata::Error) -> Self {
        match e {
            tidegate_metadata::Error::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            tidegate_metadata::Error::Invalid { .. } => Self::bad_request(e.to_string()),
            tidegate_metadata::Error::Conflict(_) => Self::conflict(e.to_string()),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

/// `Json` with our error shape for bodies that are not valid JSON or have unknown fields.
pub(crate) struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::BytesRejection(_) => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body is larger than {MAX_BODY} bytes or unreadable"),
                ),
                other => ApiError::bad_request(other.body_text()),
            }),
        }
    }
}

/// The data space every object belongs to until the metadata model has data spaces: the
/// operator tokens, the only subjects so far, hold every action in every space anyway.
const DEFAULT_SPACE: &str = "default";

/// Checks the operator bearer token and the role's grant. Deny by default.
async fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    action: Action,
) -> Result<String, ApiError> {
    let token = bearer(headers).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    let digest = Sha256::digest(token.as_bytes());
    let subject = shared
        .config
        .operator_tokens
        .iter()
        .position(|t| Sha256::digest(t.expose().as_bytes()) == digest)
        .map(operator_subject)
        .ok_or_else(|| ApiError::unauthorized("unknown bearer token"))?;
    let space = (action.scope() == Scope::Space).then_some(DEFAULT_SPACE);
    let allowed = shared
        .authz
        .allowed(&subject, action, space)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if allowed {
        Ok(subject)
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{action}` is not granted"),
        ))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

// --- Gateways ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGateway {
    name: String,
}

#[derive(Serialize)]
struct CreatedGateway {
    id: String,
    name: String,
    /// Shown once; the control plane keeps only its digest.
    enrollment_token: String,
    enrollment_expires_s: u64,
}

async fn create_gateway(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Body(req): Body<CreateGateway>,
) -> Result<(StatusCode, Json<CreatedGateway>), ApiError> {
    authorize(&shared, &headers, Action::GatewayManage).await?;
    validate_name("name", &req.name)?;
    let token = EnrollmentToken::generate()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let expires = tidegate_auth::now_s() + shared.config.enrollment_ttl.as_secs();
    let gateway = Gateway {
        id: new_id("gw"),
        name: req.name,
        state: GatewayState::PendingEnrollment,
        public_key: None,
        online: false,
        last_seen_s: None,
        software: None,
        metrics: None,
        enrollment_digest: Some(token.digest()),
        enrollment_expires_s: Some(expires),
    };
    let created = CreatedGateway {
        id: gateway.id.clone(),
        name: gateway.name.clone(),
        enrollment_token: token.expose().to_owned(),
        enrollment_expires_s: expires,
    };
    shared.store.insert_gateway(gateway);
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_gateways(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Gateway>>, ApiError> {
    authorize(&shared, &headers, Action::GatewayRead).await?;
    Ok(Json(shared.store.gateways()))
}

async fn get_gateway(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Gateway>, ApiError> {
    authorize(&shared, &headers, Action::GatewayRead).await?;
    Ok(Json(shared.store.gateway(&id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    token: String,
    public_key: String,
}

#[derive(Serialize)]
struct Enrolled {
    gateway_id: String,
    audience: String,
}

/// Enrollment is authenticated by the one-time token itself.
async fn enroll_gateway(
    State(shared): State<Arc<Shared>>,
    Body(req): Body<EnrollRequest>,
) -> Result<Json<Enrolled>, ApiError> {
    let refused = || {
        tracing::warn!(message = "enrollment refused: invalid, expired or used token");
        ApiError::unauthorized("enrollment token is invalid, expired or already used")
    };
    let token = EnrollmentToken::parse(&req.token).map_err(|_| refused())?;
    let key = PublicKey::from_base64(&req.public_key)
        .map_err(|e| ApiError::bad_request(format!("public_key: {e}")))?;
    let gateway = shared
        .store
        .gateway_by_enrollment(&token.digest())
        .ok_or_else(refused)?;
    let now = tidegate_auth::now_s();
    shared
        .store
        .update_gateway(&gateway.id, |g| {
            // Checked again under the lock: two concurrent enrollments cannot both succeed.
            if g.enrollment_digest != Some(token.digest())
                || g.enrollment_expires_s.is_none_or(|e| e < now)
            {
                return Err(tidegate_metadata::Error::Conflict(
                    "enrollment token is invalid, expired or already used".into(),
                ));
            }
            g.enrollment_digest = None;
            g.enrollment_expires_s = None;
            g.public_key = Some(key.to_base64());
            g.state = GatewayState::Active;
            Ok(())
        })
        .map_err(|_| refused())?;
    tracing::info!(message = "gateway enrolled", gateway = %gateway.id);
    Ok(Json(Enrolled {
        gateway_id: gateway.id,
        audience: shared.config.id.clone(),
    }))
}

/// The gateway's WebSocket endpoint: JWT first, then the sealed link.
async fn gateway_connect(
    State(shared): State<Arc<Shared>>,
    Extension(tls): Extension<TlsInfo>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let peer = tls.peer;
    let reject = |reason: &str| {
        tracing::warn!(message = "gateway connection refused", %peer, %reason);
        ApiError::unauthorized(format!("gateway authentication failed: {reason}"))
    };
    let token = bearer(&headers).ok_or_else(|| reject("missing bearer token"))?;
    let gateway_id = tidegate_auth::claimed_gateway(token).map_err(|e| reject(&e.to_string()))?;
    let gateway = shared
        .store
        .gateway(&gateway_id)
        .map_err(|_| reject("unknown gateway"))?;
    if let GatewayState::Deactivated { reason } = &gateway.state {
        tracing::warn!(message = "deactivated gateway refused", gateway = %gateway_id, %reason);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "gateway_deactivated",
            format!("gateway is deactivated: {reason}"),
        ));
    }
    let key = gateway
        .public_key
        .as_deref()
        .ok_or_else(|| reject("gateway is not enrolled"))
        .and_then(|k| PublicKey::from_base64(k).map_err(|e| reject(&e.to_string())))?;
    tidegate_auth::verify_token(
        token,
        &gateway_id,
        &key,
        &shared.config.id,
        &tls.auth_binding,
    )
    .map_err(|e| reject(&e.to_string()))?;
    let binding = tls.channel_binding;
    Ok(ws
        .max_message_size(tidegate_proto::DEFAULT_MAX_FRAME_LEN + tidegate_channel::OVERHEAD)
        .on_upgrade(move |socket| crate::sessions::run(shared, gateway_id, socket, binding)))
}

// --- Connections ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConnection {
    name: String,
    kind: String,
    #[serde(default)]
    settings: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

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

async fn create_connection(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Body(req): Body<CreateConnection>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    authorize(&shared, &headers, Action::ConnectionCreate).await?;
    validate_name("name", &req.name)?;
    let Some((_, required)) = KINDS.iter().find(|(k, _)| *k == req.kind) else {
        let known: Vec<_> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err(ApiError::bad_request(format!(
            "unknown connection kind {:?}; known kinds: {}",
            req.kind,
            known.join(", ")
        )));
    };
    for setting in *required {
        if req.settings.get(*setting).is_none_or(|v| v.is_empty()) {
            return Err(ApiError::bad_request(format!(
                "a {} connection needs the setting {setting:?}",
                req.kind
            )));
        }
    }
    let mut secrets = SecretMap::new();
    for (k, v) in req.secrets {
        secrets.insert(k, SecretString::new(v));
    }
    let connection = Connection {
        id: new_id("conn"),
        name: req.name,
        kind: req.kind,
        settings: req.settings,
        secrets,
    };
    let view = ConnectionView::from(&connection);
    shared.store.insert_connection(connection);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_connections(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ConnectionView>>, ApiError> {
    authorize(&shared, &headers, Action::ConnectionRead).await?;
    Ok(Json(shared.store.connection_views()))
}

// --- Tasks and runs ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTask {
    name: String,
    gateway_id: String,
    source_id: String,
    target_id: String,
    #[serde(default)]
    tables: TableSelection,
}

async fn create_task(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Body(req): Body<CreateTask>,
) -> Result<(StatusCode, Json<DataTask>), ApiError> {
    authorize(&shared, &headers, Action::TaskCreate).await?;
    validate_name("name", &req.name)?;
    shared.store.gateway(&req.gateway_id)?;
    shared.store.connection(&req.source_id)?;
    shared.store.connection(&req.target_id)?;
    let task = DataTask {
        id: new_id("task"),
        name: req.name,
        gateway_id: req.gateway_id,
        source_id: req.source_id,
        target_id: req.target_id,
        tables: req.tables,
    };
    shared.store.insert_task(task.clone());
    Ok((StatusCode::CREATED, Json(task)))
}

async fn get_task(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DataTask>, ApiError> {
    authorize(&shared, &headers, Action::TaskRead).await?;
    Ok(Json(shared.store.task(&id)?))
}

fn spec(c: Connection) -> ConnectionSpec {
    ConnectionSpec {
        id: c.id,
        kind: c.kind,
        settings: c.settings,
        secrets: c.secrets,
    }
}

async fn start_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TaskRun>), ApiError> {
    authorize(&shared, &headers, Action::TaskRun).await?;
    let task = shared.store.task(&id)?;
    if !shared.store.active_runs(&id).is_empty() {
        return Err(ApiError::conflict("the task is already running"));
    }
    let run = TaskRun {
        id: new_id("run"),
        task_id: task.id.clone(),
        state: TaskState::Starting,
        tables: BTreeMap::new(),
        elapsed_ms: 0,
        error: None,
        started_s: tidegate_auth::now_s(),
    };
    shared.store.insert_run(run.clone());
    send_start(&shared, &task, &run.id, Vec::new()).await?;
    Ok((StatusCode::CREATED, Json(shared.store.run(&run.id)?)))
}

/// Resumes a failed or stopped run under the same run id: tables it finished (their output is
/// committed) are skipped, every other table is copied again from the start, replacing what
/// the interrupted attempt left.
async fn resume_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TaskRun>), ApiError> {
    authorize(&shared, &headers, Action::TaskResume).await?;
    let run = shared.store.run(&id)?;
    if !matches!(run.state, TaskState::Failed | TaskState::Stopped) {
        return Err(ApiError::conflict(format!(
            "only a failed or stopped run can be resumed; this one is {:?}",
            run.state
        )));
    }
    let task = shared.store.task(&run.task_id)?;
    if !shared.store.active_runs(&task.id).is_empty() {
        return Err(ApiError::conflict("the task is already running"));
    }
    let completed: Vec<String> = run
        .tables
        .iter()
        .filter(|(_, table)| table.state == TableState::Done)
        .map(|(name, _)| name.clone())
        .collect();
    shared.store.update_run(&id, |r| {
        r.state = TaskState::Starting;
        r.error = None;
    })?;
    send_start(&shared, &task, &id, completed).await?;
    Ok((StatusCode::ACCEPTED, Json(shared.store.run(&id)?)))
}

/// Sends the start command of run `run_id` to the task's gateway; marks the run failed if the
/// gateway does not accept it.
async fn send_start(
    shared: &Shared,
    task: &DataTask,
    run_id: &str,
    completed_tables: Vec<String>,
) -> Result<(), ApiError> {
    let command = Command::StartTask(TaskSpec {
        task_id: task.id.clone(),
        run_id: run_id.to_owned(),
        kind: TaskKind::FullLoad,
        source: spec(shared.store.connection(&task.source_id)?),
        target: spec(shared.store.connection(&task.target_id)?),
        tables: task.tables.clone(),
        completed_tables,
    });
    let result = shared
        .sessions
        .command(&task.gateway_id, command, COMMAND_TIMEOUT)
        .await;
    let failure = match result {
        Ok(r) => match r.outcome {
            Ok(CommandOutcome::Accepted) => None,
            Ok(_) => Some("gateway gave an unexpected answer".to_owned()),
            Err(report) => Some(report.message),
        },
        Err(e) => Some(e),
    };
    if let Some(message) = failure {
        let _ = shared.store.update_run(run_id, |r| {
            r.state = TaskState::Failed;
            r.error = Some(message.clone());
        });
        return Err(ApiError::conflict(format!(
            "the run could not start: {message}"
        )));
    }
    Ok(())
}

async fn stop_task(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&shared, &headers, Action::TaskStop).await?;
    let task = shared.store.task(&id)?;
    let result = shared
        .sessions
        .command(
            &task.gateway_id,
            Command::StopTask { task_id: task.id },
            COMMAND_TIMEOUT,
        )
        .await
        .map_err(ApiError::conflict)?;
    match result.outcome {
        Ok(_) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"task_id": id, "state": "stopping"})),
        )),
        Err(report) => Err(ApiError::conflict(report.message)),
    }
}

async fn get_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskRun>, ApiError> {
    authorize(&shared, &headers, Action::RunRead).await?;
    Ok(Json(shared.store.run(&id)?))
}
