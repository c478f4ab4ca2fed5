//! The REST API and the gateway connect endpoint.
//!
//! Every handler authenticates the caller, reads what the request names (so that it knows the
//! data space), asks `tidegate-rbac` for exactly one [`Action`](tidegate_rbac::Action) in that
//! space (`access.rs`), and only then acts. Errors are `{"error": {"code", "message"}}` with a
//! 4xx or 5xx status; messages never hold a secret.

mod access;
mod assist;
mod audit;
mod auth;
mod connections;
mod gateways;
mod products;
mod spaces;
mod tasks;
mod users;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tidegate_metadata::{Cursor, DataSpace, MetadataStore, Page, PageRequest, WriteTx};

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

/// The routes and the OpenAPI document describing them, both from the handlers'
/// `#[utoipa::path]` attributes: a route cannot be served without being documented.
fn documented_routes() -> (Router<Arc<Shared>>, utoipa::openapi::OpenApi) {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::oidc_login))
        .routes(routes!(auth::oidc_callback))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::show, users::update))
        .routes(routes!(users::grant_system_role, users::revoke_system_role))
        .routes(routes!(spaces::list, spaces::create))
        .routes(routes!(spaces::show, spaces::update, spaces::delete))
        .routes(routes!(spaces::members))
        .routes(routes!(spaces::grant, spaces::revoke))
        .routes(routes!(audit::list))
        .routes(routes!(audit::export))
        .routes(routes!(gateways::create, gateways::list))
        .routes(routes!(gateways::enroll))
        .routes(routes!(gateways::show, gateways::delete))
        .routes(routes!(gateways::revoke))
        .routes(routes!(connections::create, connections::list))
        .routes(routes!(
            connections::show,
            connections::update,
            connections::delete
        ))
        .routes(routes!(connections::test))
        .routes(routes!(assist::describe))
        .routes(routes!(products::create, products::list))
        .routes(routes!(assist::settings, assist::configure))
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::show, tasks::update, tasks::delete))
        .routes(routes!(tasks::output))
        .routes(routes!(tasks::start_run, tasks::runs))
        .routes(routes!(tasks::stop))
        .routes(routes!(tasks::resync))
        .routes(routes!(tasks::run))
        .routes(routes!(tasks::resume_run))
        .routes(routes!(gateways::connect))
        .split_for_parts()
}

/// The OpenAPI document of the API, as `GET /api/v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().1
}

/// Where the document is served.
const OPENAPI_PATH: &str = "/api/v1/openapi.json";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tidegate control plane",
        description = "Metadata, users, roles, secrets and audit of a Tidegate installation. \
            Every list takes `limit` and `after` and answers `{\"items\": [...], \"next\": cursor or null}`; \
            every refusal is `{\"error\": {\"code\", \"message\"}}` with a 4xx status. \
            `x-tidegate-action` names the action of docs/rbac.md an operation asks for \
            in the data space of the object it names."
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Declares the bearer scheme: a login session token (`tgs_...`) or an operator token.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let (routes, document) = documented_routes();
    let document = Arc::new(document);
    routes
        .route(
            OPENAPI_PATH,
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
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

/// An object changed by reading it, changing it in memory and writing it back only if its
/// `version` is still the one read (compare-and-swap): see [`Ctx::change`].
pub(crate) trait Versioned: Clone + Send + Sync {
    fn version(&self) -> i64;
    /// The object as stored, read in `tx`.
    fn read(tx: &mut WriteTx, id: &str) -> impl Future<Output = StoreResult<Self>> + Send;
    /// Writes `changed` in `tx` if the stored version is still `changed`'s, else a conflict.
    fn write(tx: &mut WriteTx, changed: &Self) -> impl Future<Output = StoreResult<Self>> + Send;
}

type StoreResult<T> = Result<T, tidegate_metadata::Error>;

/// How many times a change without a version is tried against concurrent writers.
const MAX_ATTEMPTS: u32 = 5;

impl Ctx {
    /// Applies `change` to the object `id` (`current` is how the request read it, to
    /// authorize it) and commits the result with the request's audit event.
    ///
    /// A change made against a version (`expected`) older than the stored one is refused
    /// (409), so that two editors do not overwrite each other unknowingly. Without a version
    /// it applies to whatever is stored: when a concurrent writer wins the compare-and-swap,
    /// the object is read again and the change tried again, a few times. The retry reads in
    /// its write transaction, which on SQLite holds the write lock, so it cannot lose again:
    /// writers queued for the lock would otherwise keep reading versions that the one before
    /// them is about to replace.
    pub(crate) async fn change<T: Versioned>(
        &self,
        id: &str,
        expected: Option<i64>,
        mut current: T,
        change: impl Fn(T) -> Result<T, ApiError> + Send,
    ) -> Result<T, ApiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.shared.store.begin_write().await?;
            if attempt > 1 {
                current = T::read(&mut tx, id).await?;
            }
            if let Some(v) = expected
                && v != current.version()
            {
                return Err(ApiError::conflict(format!(
                    "the object changed since version {v}; it is at version {}: read it again",
                    current.version()
                )));
            }
            match T::write(&mut tx, &change(current.clone())?).await {
                Ok(changed) => {
                    self.commit(tx).await?;
                    return Ok(changed);
                }
                Err(tidegate_metadata::Error::Conflict(_))
                    if expected.is_none() && attempt < MAX_ATTEMPTS => {}
                Err(e) => return Err(e.into()),
            }
        }
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
    /// What went wrong, for people.
    pub(crate) fn message(&self) -> &str {
        &self.message
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

/// The body of every refusal.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, for programs: `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `body_too_large`, `method_not_allowed`, ...
    code: &'static str,
    /// For people; never holds a secret.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        });
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
#[derive(serde::Deserialize, Default, utoipa::IntoParams)]
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::str::FromStr;

    use super::audit::AUDITED;

    /// Every operation: `(METHOD, path, x-tidegate-action)`.
    fn operations() -> Vec<(String, String, String)> {
        let document = serde_json::to_value(super::openapi()).unwrap();
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let action = operation["x-tidegate-action"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: no x-tidegate-action"));
                operations.push((method.to_uppercase(), path.clone(), action.to_owned()));
            }
        }
        operations
    }

    /// `docs/openapi.json` is the document the control plane serves. `UPDATE_DOCS=1` rewrites it.
    #[test]
    fn docs_publish_the_served_document() {
        let served = serde_json::to_string_pretty(&super::openapi()).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &served).unwrap();
        }
        let published = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            published == served,
            "docs/openapi.json differs from the routes' document; run \
             `UPDATE_DOCS=1 cargo nextest run -p tidegate-control-plane docs_publish`"
        );
    }

    #[test]
    fn every_operation_names_its_action_and_needs_a_token_unless_it_authenticates() {
        let document = serde_json::to_value(super::openapi()).unwrap();
        for (method, path, action) in operations() {
            let operation = &document["paths"][&path][method.to_lowercase()];
            if action == "none" {
                continue;
            }
            assert!(
                tidegate_rbac::Action::from_str(&action).is_ok(),
                "{method} {path}: unknown action {action:?}"
            );
            assert_eq!(
                operation["security"],
                serde_json::json!([{"bearer": []}]),
                "{method} {path}: asks for {action} but declares no bearer token"
            );
            assert!(
                operation["responses"]["4XX"].is_object(),
                "{method} {path}: refusals undocumented"
            );
        }
    }

    #[test]
    fn every_state_changing_operation_is_audited_and_every_audited_route_exists() {
        let operations: BTreeSet<(String, String)> = operations()
            .into_iter()
            .map(|(method, path, _)| (method, path))
            .collect();
        let audited: BTreeSet<(String, String)> = AUDITED
            .iter()
            .map(|(method, path, _, _)| (method.as_str().to_owned(), (*path).to_owned()))
            .collect();
        for route in &audited {
            assert!(
                operations.contains(route),
                "audited but not served: {route:?}"
            );
        }
        for (method, path) in &operations {
            let reads = method == "GET" && path != "/api/v1/auth/oidc/callback";
            let route = (method.clone(), path.clone());
            assert_eq!(
                audited.contains(&route),
                !reads,
                "{method} {path}: state-changing operations are audited, reads are not"
            );
        }
    }
}
