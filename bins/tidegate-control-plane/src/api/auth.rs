//! Logins: local users with a password, or single sign-on through an OpenID provider. Either
//! gives a `tgs_…` bearer token of which the store keeps only the SHA-256 digest, valid until
//! it expires, is revoked (logout, the user disabled) or the user is disabled.

use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidegate_identity::oidc::{OidcConfig, OidcLogin, PendingLogins};
use tidegate_identity::session::SessionToken;
use tidegate_metadata::{MetadataStore, NewLoginSession, NewUser, OidcIdentity, TokenDigest, User};
use tidegate_proto::SecretString;

use super::access::Principal;
use super::{ApiError, Body, Ctx, Query, now_ms};
use crate::Shared;

/// The e-mail address stored for a user who has none (the store requires one).
pub(crate) const NO_EMAIL: &str = "-";

/// Single sign-on: the provider (discovered at first use, so that a provider that is down
/// does not stop the control plane from starting) and the logins in progress.
#[derive(Debug)]
pub(crate) struct OidcState {
    config: Option<OidcConfig>,
    login: tokio::sync::OnceCell<OidcLogin>,
    pending: PendingLogins,
}

impl OidcState {
    pub(crate) fn new(config: Option<OidcConfig>) -> Self {
        Self {
            config,
            login: tokio::sync::OnceCell::new(),
            pending: PendingLogins::default(),
        }
    }

    async fn login(&self) -> Result<&OidcLogin, ApiError> {
        let config = self
            .config
            .as_ref()
            .ok_or_else(|| ApiError::not_found("single sign-on is not configured"))?;
        self.login
            .get_or_try_init(|| OidcLogin::discover(config.clone()))
            .await
            .map_err(|e| {
                tracing::warn!(message = "OpenID provider unavailable", error = %e);
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
            })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    username: String,
    password: SecretString,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LoginAnswer {
    /// The bearer token; shown once.
    token: String,
    expires_at_ms: i64,
    user: UserRef,
}

#[derive(Serialize, utoipa::ToSchema)]
struct UserRef {
    id: String,
    username: String,
}

/// The message of every failed password login: it does not say which part was wrong.
const BAD_LOGIN: &str = "invalid username or password";

#[utoipa::path(
    operation_id = "auth_login",
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "The session token, shown once", body = LoginAnswer), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn login(
    ctx: Ctx,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginAnswer>, ApiError> {
    let shared = &ctx.shared;
    ctx.note(|n| n.detail = json!({"username": req.username, "method": "password"}));
    let user = match shared
        .store
        .user_by_username(&shared.tenant_id, &req.username)
        .await
    {
        Ok(user) => Some(user),
        Err(tidegate_metadata::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(user) = &user {
        ctx.note(|n| {
            n.actor = user.id.clone();
            n.target_id = Some(user.id.clone());
        });
    }
    // Verifying costs the same whether or not the user exists or has a password.
    let hash = user
        .as_ref()
        .and_then(|u| u.password_hash.as_ref())
        .map(|h| h.as_str().to_owned());
    let password = req.password;
    let matched = tokio::task::spawn_blocking(move || {
        tidegate_identity::password::verify(password.expose(), hash.as_deref())
    })
    .await
    .map_err(|_| ApiError::internal("password verification failed"))?;
    match user {
        Some(user) if matched && !user.disabled => Ok(Json(shared.open_session(&user).await?)),
        _ => Err(ApiError::unauthorized(BAD_LOGIN)),
    }
}

/// Ends the session whose token was presented. An operator token has no session to end.
#[utoipa::path(
    operation_id = "auth_logout",
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    responses((status = 200, description = "The session ended", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn logout(ctx: Ctx) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = ctx.caller().await?;
    match &caller.principal {
        Principal::User { session_id, .. } => {
            ctx.note(|n| n.target_id = Some(session_id.clone()));
            ctx.shared
                .store
                .revoke_session(session_id, now_ms())
                .await?;
            Ok(Json(json!({"revoked": true})))
        }
        Principal::Operator(_) => Ok(Json(json!({"revoked": false}))),
    }
}

/// Who the caller is, with its roles.
#[utoipa::path(
    operation_id = "auth_me",
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    responses((status = 200, description = "Who the caller is, with its roles", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn me(ctx: Ctx) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = ctx.caller().await?;
    let shared = &ctx.shared;
    let Some(user) = caller.user() else {
        return Ok(Json(json!({
            "id": caller.subject, "username": "operator", "operator": true,
            "system_roles": [], "spaces": [],
        })));
    };
    let system_roles: Vec<String> = shared
        .store
        .system_roles(&user.id)
        .await?
        .into_iter()
        .map(|a| a.role)
        .collect();
    let mut spaces: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for a in shared.space_assignments_of(&user.id).await? {
        spaces.entry(a.space_id).or_default().push(a.role);
    }
    let spaces: Vec<_> = spaces
        .into_iter()
        .map(|(space_id, roles)| json!({"space_id": space_id, "roles": roles}))
        .collect();
    Ok(Json(json!({
        "id": user.id, "username": user.username, "operator": false,
        "system_roles": system_roles, "spaces": spaces,
    })))
}

/// Starts a single sign-on: where to send the browser.
#[utoipa::path(
    operation_id = "auth_oidc_login",
    get,
    path = "/api/v1/auth/oidc/login",
    tag = "auth",
    responses((status = 200, description = "Where to send the browser", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn oidc_login(ctx: Ctx) -> Result<Json<serde_json::Value>, ApiError> {
    let oidc = &ctx.shared.oidc;
    let login = oidc.login().await?;
    let (url, pending) = login.begin();
    oidc.pending.insert(pending).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    Ok(Json(json!({"authorization_url": url})))
}

/// Where the provider sends the browser back. Providers add parameters of their own, so
/// unknown ones are ignored here.
#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// Completes a single sign-on; answers like a password login.
#[utoipa::path(
    operation_id = "auth_oidc_callback",
    get,
    path = "/api/v1/auth/oidc/callback",
    tag = "auth",
    params(Callback),
    responses((status = 200, description = "The session token, shown once", body = LoginAnswer), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn oidc_callback(
    ctx: Ctx,
    Query(callback): Query<Callback>,
) -> Result<Json<LoginAnswer>, ApiError> {
    let shared = &ctx.shared;
    ctx.note(|n| n.detail = json!({"method": "oidc"}));
    let login = shared.oidc.login().await?;
    if let Some(error) = callback.error {
        return Err(ApiError::unauthorized(format!(
            "the OpenID provider refused the login: {}",
            error.chars().take(200).collect::<String>()
        )));
    }
    let (Some(code), Some(state)) = (callback.code, callback.state) else {
        return Err(ApiError::bad_request("the callback needs code and state"));
    };
    let pending = shared
        .oidc
        .pending
        .take(&state)
        .ok_or_else(|| ApiError::unauthorized("unknown or expired login state"))?;
    let identity = login
        .finish(pending, &code)
        .await
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    ctx.note(|n| {
        n.detail =
            json!({"method": "oidc", "username": identity.username, "issuer": identity.issuer})
    });
    let key = OidcIdentity {
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
    };
    let user = match shared.store.user_by_oidc(&key).await {
        Ok(user) => user,
        Err(tidegate_metadata::Error::NotFound { .. }) if shared.config.oidc_auto_create => {
            let new = NewUser {
                tenant_id: shared.tenant_id.clone(),
                display_name: identity.name.clone().unwrap_or(identity.username.clone()),
                username: identity.username,
                email: identity.email.unwrap_or_else(|| NO_EMAIL.to_owned()),
                password_hash: None,
                oidc: Some(key),
            };
            match shared.store.create_user(&new).await {
                Ok(user) => user,
                Err(tidegate_metadata::Error::Conflict(_)) => {
                    return Err(ApiError::conflict(format!(
                        "the user name {:?} is taken by another user",
                        new.username
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(tidegate_metadata::Error::NotFound { .. }) => {
            return Err(ApiError::forbidden("no such user"));
        }
        Err(e) => return Err(e.into()),
    };
    ctx.note(|n| {
        n.actor = user.id.clone();
        n.target_id = Some(user.id.clone());
    });
    if user.disabled || user.tenant_id != shared.tenant_id {
        return Err(ApiError::unauthorized("the user is disabled"));
    }
    Ok(Json(shared.open_session(&user).await?))
}

impl Shared {
    /// A new login session for `user`.
    async fn open_session(&self, user: &User) -> Result<LoginAnswer, ApiError> {
        let token = SessionToken::generate();
        let ttl = i64::try_from(self.config.session_ttl.as_millis()).unwrap_or(i64::MAX);
        let session = self
            .store
            .create_session(&NewLoginSession {
                user_id: user.id.clone(),
                token: TokenDigest::of(token.expose()),
                expires_at_ms: now_ms().saturating_add(ttl),
            })
            .await?;
        Ok(LoginAnswer {
            token: token.expose().to_owned(),
            expires_at_ms: session.expires_at_ms,
            user: UserRef {
                id: user.id.clone(),
                username: user.username.clone(),
            },
        })
    }
}
