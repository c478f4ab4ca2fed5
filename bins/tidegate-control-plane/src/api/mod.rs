//! The REST API and the gateway connect endpoint.
//!
//! Every handler authenticates the caller, reads what the request names (so that it knows the
//! data space), asks `tidegate-rbac` for exactly one [`Action`](tidegate_rbac::Action) in that
//! space (`access.rs`), and only then acts. Errors are `{"error": {"code", "message"}}` with a
//! 4xx or 5xx status; messages never hold a secret.

mod access;
mod audit;
mod auth;
mod connections;
mod gateways;
mod spaces;
mod tasks;
mod users;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tidegate_metadata::{Cursor, DataSpace, MetadataStore, Page, PageRequest};

/// Pages a list held in memory (for lists the store cannot page as asked, such as a space's
/// members grouped by user): `items` sorted by `key`, the cursor being the last key returned.
pub(crate) fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    limit: Option<u32>,
    after: Option<&str>,
) -> Result<Page<T>, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > tidegate_metadata::MAX_PAGE_LIMIT {
        return Err(ApiError::bad_request(format!(
            "invalid limit: must be 1 to {}, got {limit}",
            tidegate_metadata::MAX_PAGE_LIMIT
        )));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| after.is_none_or(|a| key(item) > a))
        .collect();
    let next = (rest.len() > limit).then(|| Cursor::new(key(&rest[limit - 1])));
    rest.truncate(limit);
    Ok(Page { items: rest, next })
}

use crate::Shared;

pub(crate) use access::operator_subject;
pub(crate) use auth::{NO_EMAIL, OidcState};

/// Largest JSON body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Items in a page when the request does not say.
const DEFAULT_LIMIT: u32 = 100;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/me", get(auth::me))
        .route("/api/v1/auth/oidc/login", get(auth::oidc_login))
        .route("/api/v1/auth/oidc/callback", get(auth::oidc_callback))
        .route("/api/v1/users", get(users::list).post(users::create))
        .route("/api/v1/users/{id}", get(users::show).patch(users::update))
        .route(
            "/api/v1/users/{id}/system-roles/{role}",
            put(users::grant_system_role).delete(users::revoke_system_role),
        )
        .route("/api/v1/spaces", get(spaces::list).post(spaces::create))
        .route(
            "/api/v1/spaces/{id}",
            get(spaces::show)
                .patch(spaces::update)
                .delete(spaces::delete),
        )
        .route("/api/v1/spaces/{id}/members", get(spaces::members))
        .route(
            "/api/v1/spaces/{id}/members/{user_id}/roles/{role}",
            put(spaces::grant).delete(spaces::revoke),
        )
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/audit/export", get(audit::export))
        .route(
            "/api/v1/gateways",
            post(gateways::create).get(gateways::list),
        )
        .route("/api/v1/gateways/enroll", post(gateways::enroll))
        .route(
            "/api/v1/gateways/{id}",
            get(gateways::show).delete(gateways::delete),
        )
        .route("/api/v1/gateways/{id}/revoke", post(gateways::revoke))
        .route(
            "/api/v1/connections",
            post(connections::create).get(connections::list),
        )
        .route(
            "/api/v1/connections/{id}",
            get(connections::show)
                .patch(connections::update)
                .delete(connections::delete),
        )
        .route("/api/v1/connections/{id}/test", post(connections::test))
        .route("/api/v1/tasks", post(tasks::create).get(tasks::list))
        .route(
            "/api/v1/tasks/{id}",
            get(tasks::show).patch(tasks::update).delete(tasks::delete),
        )
        .route("/api/v1/tasks/{id}/output", get(tasks::output))
        .route(
            "/api/v1/tasks/{id}/runs",
            post(tasks::start_run).get(tasks::runs),
        )
        .route("/api/v1/tasks/{id}/stop", post(tasks::stop))
        .route("/api/v1/runs/{id}", get(tasks::run))
        .route("/api/v1/runs/{id}/resume", post(tasks::resume_run))
        .route("/v1/gateway/connect", get(gateways::connect))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take this method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            audit::record,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Refuses a change made against an older version of an object than the stored one (409), so
/// that two editors do not overwrite each other unknowingly. Without a version, the change
/// applies to whatever is stored (the store still refuses a concurrent write).
pub(crate) fn check_version(expected: Option<i64>, stored: i64) -> Result<(), ApiError> {
    match expected {
        Some(v) if v != stored => Err(ApiError::conflict(format!(
            "the object changed since version {v}; it is at version {stored}: read it again"
        ))),
        _ => Ok(()),
    }
}

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`) or a value.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// --- Errors --------------------------------------------------------------------------------

/// A JSON error: `{"error": {"code": ..., "message": ...}}`. Messages never hold secrets.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        response
            .extensions_mut()
            .insert(audit::ErrorMessage(self.message));
        response
    }
}

impl From<tidegate_metadata::Error> for ApiError {
    fn from(e: tidegate_metadata::Error) -> Self {
        match e {
            tidegate_metadata::Error::NotFound { .. } => Self::not_found(e.to_string()),
            tidegate_metadata::Error::Invalid { .. } => Self::bad_request(e.to_string()),
            tidegate_metadata::Error::Conflict(_) => Self::conflict(e.to_string()),
            _ => {
                tracing::error!(message = "metadata store failed", error = %e);
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the metadata store failed; try again",
                )
            }
        }
    }
}

impl From<tidegate_rbac::Error> for ApiError {
    fn from(e: tidegate_rbac::Error) -> Self {
        Self::internal(format!("authorization: {e}"))
    }
}

// --- Extractors ----------------------------------------------------------------------------

/// `Json` with our error shape for bodies that are not valid JSON or have unknown fields.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
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

/// `Query` with our error shape for query strings that do not parse.
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// What every handler gets: the shared state, the bearer token presented (if any) and the
/// note of the request's audit event (audited routes only).
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    token: Option<String>,
    note: Option<audit::Slot>,
}

impl Ctx {
    /// Adds to the request's audit event (a no-op on routes that are not audited).
    pub(crate) fn note(&self, f: impl FnOnce(&mut audit::Note)) {
        if let Some(slot) = &self.note {
            slot.update(f);
        }
    }
}

impl FromRequestParts<Arc<Shared>> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        Ok(Self {
            shared: shared.clone(),
            token,
            note: parts.extensions.get::<audit::Slot>().cloned(),
        })
    }
}

// --- Lists ---------------------------------------------------------------------------------

/// The query of a list: the data space (default: the default space) and the page.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) space_id: Option<String>,
    pub(crate) limit: Option<u32>,
    pub(crate) after: Option<String>,
}

impl ListQuery {
    pub(crate) fn page(&self) -> PageRequest {
        page_request(self.limit, self.after.as_deref())
    }
}

pub(crate) fn page_request(limit: Option<u32>, after: Option<&str>) -> PageRequest {
    PageRequest {
        limit: limit.unwrap_or(DEFAULT_LIMIT),
        after: after.map(Cursor::new),
    }
}

/// A page of API views: `{"items": [...], "next": cursor or null}`.
pub(crate) fn page_of<T, V: Serialize>(page: Page<T>, view: impl FnMut(T) -> V) -> Json<Page<V>> {
    Json(Page {
        items: page.items.into_iter().map(view).collect(),
        next: page.next,
    })
}

impl Shared {
    /// The data space a request names, or the default one; 404 if there is no such space in
    /// this tenant.
    pub(crate) async fn space_or_default(&self, id: Option<&str>) -> Result<DataSpace, ApiError> {
        let id = id.unwrap_or(&self.default_space_id);
        let space = self.store.space(id).await?;
        if space.tenant_id != self.tenant_id {
            return Err(ApiError::not_found(format!("data space {id} not found")));
        }
        Ok(space)
    }
}
