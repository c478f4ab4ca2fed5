//! The audit log: every state-changing request is recorded by one middleware, and read back
//! through `GET /api/v1/audit` and `GET /api/v1/audit/export`.
//!
//! The middleware knows the audited routes ([`AUDITED`]: method and route → action and the
//! kind of object acted on). Before the handler runs it puts an empty [`Note`] into the
//! request; the handler fills in what only it learns (who the caller is, the data space, the
//! id of what it created, details), and after the response the middleware appends one event
//! with the outcome: `success` for a 2xx answer, `denied` for 401 and 403, `failure` for
//! anything else, with the error message (which never holds a secret) in the detail.
//!
//! A handler whose change is one [`WriteTx`] commits it with [`Ctx::commit`] instead: the
//! success event goes into the same transaction, so the change and its record are durable
//! together in one commit, and the middleware appends nothing more. Should the commit fail,
//! the middleware records the failure as for any other.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tidegate_metadata::{
    AuditEvent, AuditFilter, AuditOutcome, MetadataStore, NewAuditEvent, Page, WriteTx,
};
use tidegate_rbac::Action;

use super::access::Caller;
use super::{ApiError, Ctx, Query, now_ms, page_request};
use crate::Shared;
use crate::tls::TlsInfo;

/// The audited routes: method, route, the action recorded, the kind of object acted on.
/// A route's `{id}` is the target unless the handler names another; other parameters go to
/// the detail.
pub(crate) const AUDITED: &[(Method, &str, &str, &str)] = &[
    (
        Method::POST,
        "/api/v1/auth/login",
        "session.login",
        "session",
    ),
    (
        Method::POST,
        "/api/v1/auth/logout",
        "session.logout",
        "session",
    ),
    (
        Method::GET,
        "/api/v1/auth/oidc/callback",
        "session.login",
        "session",
    ),
    (Method::POST, "/api/v1/users", "user.create", "user"),
    (Method::PATCH, "/api/v1/users/{id}", "user.update", "user"),
    (
        Method::PUT,
        "/api/v1/users/{id}/system-roles/{role}",
        "user.grant_system_role",
        "user",
    ),
    (
        Method::DELETE,
        "/api/v1/users/{id}/system-roles/{role}",
        "user.revoke_system_role",
        "user",
    ),
    (Method::POST, "/api/v1/spaces", "space.create", "data_space"),
    (
        Method::PATCH,
        "/api/v1/spaces/{id}",
        "space.update",
        "data_space",
    ),
    (
        Method::DELETE,
        "/api/v1/spaces/{id}",
        "space.delete",
        "data_space",
    ),
    (
        Method::PUT,
        "/api/v1/spaces/{id}/members/{user_id}/roles/{role}",
        "member.grant",
        "user",
    ),
    (
        Method::DELETE,
        "/api/v1/spaces/{id}/members/{user_id}/roles/{role}",
        "member.revoke",
        "user",
    ),
    (
        Method::POST,
        "/api/v1/gateways",
        "gateway.create",
        "gateway",
    ),
    (
        Method::POST,
        "/api/v1/gateways/{id}/revoke",
        "gateway.revoke",
        "gateway",
    ),
    (
        Method::DELETE,
        "/api/v1/gateways/{id}",
        "gateway.delete",
        "gateway",
    ),
    (
        Method::POST,
        "/api/v1/gateways/enroll",
        "gateway.enroll",
        "gateway",
    ),
    (
        Method::POST,
        "/api/v1/connections",
        "connection.create",
        "connection",
    ),
    (
        Method::POST,
        "/api/v1/connections/{id}/test",
        "connection.test",
        "connection",
    ),
    (
        Method::PATCH,
        "/api/v1/connections/{id}",
        "connection.update",
        "connection",
    ),
    (
        Method::DELETE,
        "/api/v1/connections/{id}",
        "connection.delete",
        "connection",
    ),
    (
        Method::PUT,
        "/api/v1/settings/assist",
        "assist.configure",
        "tenant",
    ),
    (
        Method::POST,
        "/api/v1/connections/{id}/describe",
        "connection.describe",
        "connection",
    ),
    (
        Method::POST,
        "/api/v1/data-products",
        "data_product.create",
        "data_product",
    ),
    (Method::POST, "/api/v1/tasks", "task.create", "data_task"),
    (
        Method::PATCH,
        "/api/v1/tasks/{id}",
        "task.update",
        "data_task",
    ),
    (
        Method::DELETE,
        "/api/v1/tasks/{id}",
        "task.delete",
        "data_task",
    ),
    (
        Method::POST,
        "/api/v1/tasks/{id}/runs",
        "run.start",
        "data_task",
    ),
    (
        Method::POST,
        "/api/v1/tasks/{id}/stop",
        "run.stop",
        "data_task",
    ),
    (
        Method::POST,
        "/api/v1/runs/{id}/resume",
        "run.resume",
        "run",
    ),
    (
        Method::POST,
        "/api/v1/tasks/{id}/resync",
        "run.resync",
        "data_task",
    ),
];

/// The actor of a request nobody authenticated.
const ANONYMOUS: &str = "anonymous";

/// What a handler adds to its request's audit event.
#[derive(Debug)]
pub(crate) struct Note {
    /// Who: a user id, an operator subject, a gateway id; `anonymous` until known.
    pub(crate) actor: String,
    /// The object acted on, if not the route's `{id}`.
    pub(crate) target_id: Option<String>,
    /// The data space acted in.
    pub(crate) space_id: Option<String>,
    /// Details: names and reasons, never secrets.
    pub(crate) detail: Value,
}

impl Default for Note {
    fn default() -> Self {
        Self {
            actor: ANONYMOUS.to_owned(),
            target_id: None,
            space_id: None,
            detail: Value::Null,
        }
    }
}

/// The audit event of one request, shared by the middleware and the handler.
#[derive(Clone, Debug)]
pub(crate) struct Slot(Arc<Mutex<Pending>>);

/// What the middleware knows of a request's event, the handler's note, and whether the
/// handler recorded the event itself (with its change, through [`Ctx::commit`]).
#[derive(Debug)]
struct Pending {
    action: &'static str,
    target_kind: &'static str,
    /// The route's parameters.
    params: Vec<(String, String)>,
    /// The client's address.
    source: Option<String>,
    note: Note,
    recorded: bool,
}

impl Slot {
    pub(crate) fn update(&self, f: impl FnOnce(&mut Note)) {
        f(&mut self.lock().note);
    }

    /// The event with `outcome`; for an error answer, its status and message go to the detail.
    fn event(
        &self,
        tenant_id: &str,
        outcome: AuditOutcome,
        error: Option<(StatusCode, &str)>,
    ) -> NewAuditEvent {
        let pending = self.lock();
        let note = &pending.note;
        let mut detail = match &note.detail {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => Map::from_iter([("detail".to_owned(), other.clone())]),
        };
        let mut target_id = note.target_id.clone();
        for (name, value) in &pending.params {
            if name == "id" && target_id.is_none() {
                target_id = Some(value.clone());
            } else if name != "id" {
                detail.insert(name.clone(), Value::String(value.clone()));
            }
        }
        if let Some((status, message)) = error {
            detail.insert("status".to_owned(), json!(status.as_u16()));
            detail.insert("error".to_owned(), Value::String(message.to_owned()));
        }
        NewAuditEvent {
            at_ms: now_ms(),
            tenant_id: tenant_id.to_owned(),
            space_id: note.space_id.clone(),
            actor: note.actor.clone(),
            action: pending.action.to_owned(),
            target_kind: pending.target_kind.to_owned(),
            target_id,
            source_addr: pending.source.clone(),
            outcome,
            detail: Value::Object(detail),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Plain data: a poisoned lock still holds a usable one.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The message of an error answer, for the audit event (set by `ApiError::into_response`).
#[derive(Clone, Debug)]
pub(crate) struct ErrorMessage(pub(crate) String);

/// The middleware: records an event for every request to an audited route, unless the
/// handler recorded it with its change.
pub(crate) async fn record(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(&(_, _, action, target_kind)) = matched.as_deref().and_then(|route| {
        AUDITED
            .iter()
            .find(|(method, r, _, _)| method == request.method() && *r == route)
    }) else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    let params: Vec<(String, String)> =
        match RawPathParams::from_request_parts(&mut parts, &()).await {
            Ok(params) => params
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            Err(_) => Vec::new(),
        };
    let source = parts
        .extensions
        .get::<TlsInfo>()
        .map(|t| t.peer.ip().to_string());
    let slot = Slot(Arc::new(Mutex::new(Pending {
        action,
        target_kind,
        params,
        source,
        note: Note::default(),
        recorded: false,
    })));
    parts.extensions.insert(slot.clone());
    let response = next.run(Request::from_parts(parts, body)).await;
    if slot.lock().recorded {
        return response;
    }

    let status = response.status();
    let outcome = if status.is_success() {
        AuditOutcome::Success
    } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        AuditOutcome::Denied
    } else {
        AuditOutcome::Failure
    };
    let error = response
        .extensions()
        .get::<ErrorMessage>()
        .map(|ErrorMessage(message)| (status, message.as_str()));
    let event = slot.event(&shared.tenant_id, outcome, error);
    if let Err(error) = shared.store.append_audit(&event).await {
        tracing::error!(message = "audit event not recorded", action, %error);
    }
    response
}

impl Ctx {
    /// Commits the handler's change with the request's audit event (outcome `success`) in
    /// one transaction, so that the change is never recorded apart from it and costs one
    /// commit; the middleware then records nothing more. The last fallible step of a
    /// handler: once it succeeded, so has the request. On routes that are not audited it only
    /// commits.
    pub(crate) async fn commit(&self, mut tx: WriteTx) -> Result<(), ApiError> {
        let Some(slot) = &self.note else {
            return Ok(tx.commit().await?);
        };
        let event = slot.event(&self.shared.tenant_id, AuditOutcome::Success, None);
        tx.append_audit(&event).await?;
        tx.commit().await?;
        slot.lock().recorded = true;
        Ok(())
    }
}

/// Which events to read: a data space (`audit_read` there) or, without one, the whole
/// tenant (`spaces_administer`: Data Admin).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    space_id: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    from_ms: Option<i64>,
    until_ms: Option<i64>,
    limit: Option<u32>,
    after: Option<String>,
}

impl Ctx {
    async fn audit_filter(&self, caller: &Caller, q: &AuditQuery) -> Result<AuditFilter, ApiError> {
        let shared = &self.shared;
        let space_id = match &q.space_id {
            Some(id) => {
                let space = shared.space_or_default(Some(id)).await?;
                self.check(caller, Action::AuditRead, Some(&space.id))
                    .await?;
                Some(space.id)
            }
            None => {
                self.check(caller, Action::SpacesAdminister, None).await?;
                None
            }
        };
        Ok(AuditFilter {
            tenant_id: shared.tenant_id.clone(),
            space_id,
            actor: q.actor.clone(),
            action: q.action.clone(),
            from_ms: q.from_ms,
            until_ms: q.until_ms,
        })
    }
}

/// An event as the API shows it: the stored fields, plus `at` and `target` for tables.
fn view(event: AuditEvent) -> Value {
    let target = match &event.event.target_id {
        Some(id) => format!("{}:{id}", event.event.target_kind),
        None => event.event.target_kind.clone(),
    };
    let at = event.event.at_ms;
    let mut value = serde_json::to_value(&event).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("at".to_owned(), json!(at));
        map.insert("target".to_owned(), Value::String(target));
    }
    value
}

#[utoipa::path(
    operation_id = "audit_list",
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "A page of audit events, oldest first", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("audit_read")))
)]
pub(crate) async fn list(
    ctx: Ctx,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Page<Value>>, ApiError> {
    let caller = ctx.caller().await?;
    let filter = ctx.audit_filter(&caller, &q).await?;
    let page = page_request(q.limit, q.after.as_deref());
    let page = ctx.shared.store.audit_events(&filter, &page).await?;
    Ok(super::page_of(page, view))
}

/// Every matching event, oldest first, as JSON Lines.
#[utoipa::path(
    operation_id = "audit_export",
    get,
    path = "/api/v1/audit/export",
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "Every matching event as JSON Lines", body = String, content_type = "application/jsonl"), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("audit_read")))
)]
pub(crate) async fn export(ctx: Ctx, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    let caller = ctx.caller().await?;
    let filter = ctx.audit_filter(&caller, &q).await?;
    let mut lines = Vec::new();
    ctx.shared.store.export_audit(&filter, &mut lines).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response())
}
