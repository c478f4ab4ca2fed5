//! Gateways: registration with a one-time enrollment token, enrollment, and the WebSocket
//! endpoint where enrolled gateways connect.

use std::sync::Arc;

use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tidegate_auth::{EnrollmentToken, PublicKey};
use tidegate_metadata::{
    GatewayRecord, GatewayState, MetadataStore, MetricsReport, NewGateway, Page, TokenDigest,
    validate_name,
};
use tidegate_rbac::Action;

use super::{ApiError, Body, Ctx, ListQuery, Query, now_ms, page_of};
use crate::Shared;
use crate::tls::TlsInfo;

/// The read buffer of a gateway's WebSocket; larger messages are read in several reads.
const LINK_READ_BUFFER: usize = 4096;

/// A gateway as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct GatewayView {
    id: String,
    space_id: String,
    name: String,
    state: GatewayState,
    public_key: Option<String>,
    /// Whether it holds a link to this control plane now.
    online: bool,
    last_seen_at_ms: Option<i64>,
    last_seen_s: Option<i64>,
    /// The software version it announced.
    software: Option<String>,
    /// The same, under the name the CLI shows.
    version: Option<String>,
    metrics: Option<MetricsReport>,
    enrollment_expires_at_ms: Option<i64>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl GatewayView {
    fn of(shared: &Shared, g: GatewayRecord) -> Self {
        Self {
            online: shared.sessions.is_online(&g.id),
            id: g.id,
            space_id: g.space_id,
            name: g.name,
            state: g.state,
            public_key: g.public_key,
            last_seen_s: g.last_seen_at_ms.map(|ms| ms / 1000),
            last_seen_at_ms: g.last_seen_at_ms,
            version: g.software.clone(),
            software: g.software,
            metrics: g.metrics,
            enrollment_expires_at_ms: g.enrollment_expires_at_ms,
            created_at_ms: g.created_at_ms,
            updated_at_ms: g.updated_at_ms,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateGateway {
    name: String,
    space_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedGateway {
    id: String,
    space_id: String,
    name: String,
    /// Shown once; the control plane keeps only its digest.
    enrollment_token: String,
    enrollment_expires_s: u64,
    enrollment_expires_at_ms: i64,
}

#[utoipa::path(
    operation_id = "gateways_create",
    post,
    path = "/api/v1/gateways",
    tag = "gateways",
    request_body = CreateGateway,
    responses((status = 201, description = "The gateway and its one-time enrollment token", body = CreatedGateway), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("gateway_manage")))
)]
pub(crate) async fn create(
    ctx: Ctx,
    Body(req): Body<CreateGateway>,
) -> Result<(StatusCode, Json<CreatedGateway>), ApiError> {
    let shared = &ctx.shared;
    let (_, space) = ctx
        .in_space(req.space_id.as_deref(), Action::GatewayManage)
        .await?;
    validate_name("name", &req.name)?;
    let token = EnrollmentToken::generate().map_err(|e| ApiError::internal(e.to_string()))?;
    let expires_s = tidegate_auth::now_s() + shared.config.enrollment_ttl.as_secs();
    let expires_ms = i64::try_from(expires_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let gateway = shared
        .store
        .create_gateway(&NewGateway {
            space_id: space.id,
            name: req.name,
            enrollment: Some(TokenDigest::from_bytes(token.digest())),
            enrollment_expires_at_ms: Some(expires_ms),
        })
        .await?;
    ctx.note(|n| n.target_id = Some(gateway.id.clone()));
    let created = CreatedGateway {
        id: gateway.id,
        space_id: gateway.space_id,
        name: gateway.name,
        enrollment_token: token.expose().to_owned(),
        enrollment_expires_s: expires_s,
        enrollment_expires_at_ms: expires_ms,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    operation_id = "gateways_list",
    get,
    path = "/api/v1/gateways",
    tag = "gateways",
    params(ListQuery),
    responses((status = 200, description = "A page of gateways", body = Page<GatewayView>), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("gateway_read")))
)]
pub(crate) async fn list(
    ctx: Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<GatewayView>>, ApiError> {
    let shared = &ctx.shared;
    let (_, space) = ctx
        .in_space(q.space_id.as_deref(), Action::GatewayRead)
        .await?;
    let page = shared.store.gateways(&space.id, &q.page()).await?;
    Ok(page_of(page, |g| GatewayView::of(shared, g)))
}

#[utoipa::path(
    operation_id = "gateways_show",
    get,
    path = "/api/v1/gateways/{id}",
    tag = "gateways",
    params(("id" = String, Path, description = "The gateway's id")),
    responses((status = 200, description = "The gateway", body = GatewayView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("gateway_read")))
)]
pub(crate) async fn show(ctx: Ctx, Path(id): Path<String>) -> Result<Json<GatewayView>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let gateway = shared.gateway(&id).await?;
    ctx.check(&caller, Action::GatewayRead, Some(&gateway.space_id))
        .await?;
    Ok(Json(GatewayView::of(shared, gateway)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeGateway {
    /// Why, for whoever reads the gateway later.
    reason: Option<String>,
}

/// Revokes a gateway: it is deactivated (its key no longer authenticates), its link to this
/// control plane is cut, and it stays listed with the reason. Enrolling it again takes a new
/// gateway.
#[utoipa::path(
    operation_id = "gateways_revoke",
    post,
    path = "/api/v1/gateways/{id}/revoke",
    tag = "gateways",
    params(("id" = String, Path, description = "The gateway's id")),
    request_body = RevokeGateway,
    responses((status = 200, description = "The gateway, deactivated", body = GatewayView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("gateway_manage")))
)]
pub(crate) async fn revoke(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<RevokeGateway>,
) -> Result<Json<GatewayView>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let mut gateway = shared.gateway(&id).await?;
    ctx.check(&caller, Action::GatewayManage, Some(&gateway.space_id))
        .await?;
    let reason = req.reason.unwrap_or_else(|| "revoked".to_owned());
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "reason: at most {MAX_REASON} characters, no control characters"
        )));
    }
    gateway.state = GatewayState::Deactivated { reason };
    gateway.enrollment = None;
    gateway.enrollment_expires_at_ms = None;
    let gateway = shared.store.update_gateway(&gateway).await?;
    shared.sessions.disconnect(&gateway.id);
    tracing::info!(message = "gateway revoked", gateway = %gateway.id);
    Ok(Json(GatewayView::of(shared, gateway)))
}

/// Longest revocation reason kept.
const MAX_REASON: usize = 500;

/// Deletes a gateway no task uses any more, and cuts its link.
#[utoipa::path(
    operation_id = "gateways_delete",
    delete,
    path = "/api/v1/gateways/{id}",
    tag = "gateways",
    params(("id" = String, Path, description = "The gateway's id")),
    responses((status = 204, description = "Deleted"), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("gateway_manage")))
)]
pub(crate) async fn delete(ctx: Ctx, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let gateway = shared.gateway(&id).await?;
    ctx.check(&caller, Action::GatewayManage, Some(&gateway.space_id))
        .await?;
    shared.store.delete_gateway(&gateway.id).await?;
    shared.sessions.disconnect(&gateway.id);
    Ok(StatusCode::NO_CONTENT)
}

impl Shared {
    /// A gateway of this tenant; 404 otherwise.
    pub(crate) async fn gateway(&self, id: &str) -> Result<GatewayRecord, ApiError> {
        let gateway = self.store.gateway(id).await?;
        if gateway.tenant_id != self.tenant_id {
            return Err(ApiError::not_found(format!("gateway {id} not found")));
        }
        Ok(gateway)
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollRequest {
    token: String,
    public_key: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Enrolled {
    gateway_id: String,
    audience: String,
}

/// Enrollment is authenticated by the one-time token itself.
#[utoipa::path(
    operation_id = "gateways_enroll",
    post,
    path = "/api/v1/gateways/enroll",
    tag = "gateways",
    request_body = EnrollRequest,
    responses((status = 200, description = "Enrolled: the gateway may connect with its key", body = Enrolled), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn enroll(
    ctx: Ctx,
    Body(req): Body<EnrollRequest>,
) -> Result<Json<Enrolled>, ApiError> {
    let shared = &ctx.shared;
    let refused = || {
        tracing::warn!(message = "enrollment refused: invalid, expired or used token");
        ApiError::unauthorized("enrollment token is invalid, expired or already used")
    };
    let token = EnrollmentToken::parse(&req.token).map_err(|_| refused())?;
    let key = PublicKey::from_base64(&req.public_key)
        .map_err(|e| ApiError::bad_request(format!("public_key: {e}")))?;
    let mut gateway = match shared
        .store
        .gateway_by_enrollment(&TokenDigest::from_bytes(token.digest()))
        .await
    {
        Ok(g) => g,
        Err(tidegate_metadata::Error::NotFound { .. }) => return Err(refused()),
        Err(e) => return Err(e.into()),
    };
    if gateway
        .enrollment_expires_at_ms
        .is_none_or(|e| e < now_ms())
    {
        return Err(refused());
    }
    gateway.enrollment = None;
    gateway.enrollment_expires_at_ms = None;
    gateway.public_key = Some(key.to_base64());
    gateway.state = GatewayState::Active;
    // A compare-and-swap on the version read: of two enrollments with one token, one wins.
    let gateway = match shared.store.update_gateway(&gateway).await {
        Ok(g) => g,
        Err(tidegate_metadata::Error::Conflict(_) | tidegate_metadata::Error::NotFound { .. }) => {
            return Err(refused());
        }
        Err(e) => return Err(e.into()),
    };
    // The enrolled gateway acted: its key is from now on the one that authenticates it.
    ctx.note(|n| n.actor = gateway.id.clone());
    tracing::info!(message = "gateway enrolled", gateway = %gateway.id);
    Ok(Json(Enrolled {
        gateway_id: gateway.id,
        audience: shared.config.id.clone(),
    }))
}

/// The gateway's WebSocket endpoint: JWT first, then the sealed link.
#[utoipa::path(
    operation_id = "gateways_connect",
    get,
    path = "/v1/gateway/connect",
    tag = "gateways",
    responses((status = 101, description = "The WebSocket of the sealed link (the gateway's TLS-bound JWT as bearer token)"), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn connect(
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
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| reject("missing bearer token"))?;
    let gateway_id = tidegate_auth::claimed_gateway(token).map_err(|e| reject(&e.to_string()))?;
    let gateway = shared
        .gateway(&gateway_id)
        .await
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
    // The link carries small sealed frames: buffers of WebSocket's default 128 KiB each way
    // would be most of what an idle gateway costs the control plane.
    Ok(ws
        .read_buffer_size(LINK_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(tidegate_proto::DEFAULT_MAX_FRAME_LEN + tidegate_channel::OVERHEAD)
        .on_upgrade(move |socket| crate::sessions::run(shared, gateway, socket, binding)))
}
