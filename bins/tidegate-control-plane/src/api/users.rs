//! Local users and their system roles. Managed by whoever holds `users_manage` (Data Admin)
//! and by operators; system roles are granted under `may_grant_system` on top.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tidegate_metadata::{MetadataStore, NewUser, OidcIdentity, Page, PasswordHash, User};
use tidegate_proto::SecretString;
use tidegate_rbac::{Action, SystemRole};

use super::access::Caller;
use super::auth::NO_EMAIL;
use super::{ApiError, Body, Ctx, ListQuery, Query, now_ms};
use crate::Shared;

/// A user as the API shows it: never its password hash.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserView {
    id: String,
    username: String,
    display_name: String,
    email: Option<String>,
    disabled: bool,
    /// Its OpenID identity, for single sign-on.
    oidc: Option<OidcIdentity>,
    /// Whether it can log in with a password.
    has_password: bool,
    system_roles: Vec<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    version: i64,
}

impl Shared {
    /// A user of this tenant; 404 otherwise.
    pub(crate) async fn user(&self, id: &str) -> Result<User, ApiError> {
        let user = self.store.user(id).await?;
        if user.tenant_id != self.tenant_id {
            return Err(ApiError::not_found(format!("user {id} not found")));
        }
        Ok(user)
    }

    async fn user_view(&self, u: User) -> Result<UserView, ApiError> {
        let system_roles = self
            .store
            .system_roles(&u.id)
            .await?
            .into_iter()
            .map(|a| a.role)
            .collect();
        Ok(UserView {
            has_password: u.password_hash.is_some(),
            email: (u.email != NO_EMAIL).then_some(u.email),
            id: u.id,
            username: u.username,
            display_name: u.display_name,
            disabled: u.disabled,
            oidc: u.oidc,
            system_roles,
            created_at_ms: u.created_at_ms,
            updated_at_ms: u.updated_at_ms,
            version: u.version,
        })
    }
}

/// Authenticates the caller and checks `users_manage`.
async fn manager(ctx: &Ctx) -> Result<Caller, ApiError> {
    let caller = ctx.caller().await?;
    ctx.check(&caller, Action::UsersManage, None).await?;
    Ok(caller)
}

#[utoipa::path(
    operation_id = "users_list",
    get,
    path = "/api/v1/users",
    tag = "users",
    params(ListQuery),
    responses((status = 200, description = "A page of users", body = Page<UserView>), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("users_manage")))
)]
pub(crate) async fn list(
    ctx: Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<UserView>>, ApiError> {
    manager(&ctx).await?;
    if q.space_id.is_some() {
        return Err(ApiError::bad_request("users belong to no data space"));
    }
    let shared = &ctx.shared;
    let page = shared.store.users(&shared.tenant_id, &q.page()).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for user in page.items {
        items.push(shared.user_view(user).await?);
    }
    Ok(Json(Page {
        items,
        next: page.next,
    }))
}

#[utoipa::path(
    operation_id = "users_show",
    get,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id")),
    responses((status = 200, description = "The user", body = UserView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("users_manage")))
)]
pub(crate) async fn show(ctx: Ctx, Path(id): Path<String>) -> Result<Json<UserView>, ApiError> {
    manager(&ctx).await?;
    let shared = &ctx.shared;
    let user = shared.user(&id).await?;
    Ok(Json(shared.user_view(user).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    username: String,
    password: SecretString,
    email: Option<String>,
    display_name: Option<String>,
}

/// Creates a local user with a password (hashed with Argon2id), without any role.
#[utoipa::path(
    operation_id = "users_create",
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = CreateUser,
    responses((status = 201, description = "The user created", body = UserView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("users_manage")))
)]
pub(crate) async fn create(
    ctx: Ctx,
    Body(req): Body<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    manager(&ctx).await?;
    let shared = &ctx.shared;
    ctx.note(|n| n.detail = serde_json::json!({"username": req.username}));
    let password = req.password;
    let hash =
        tokio::task::spawn_blocking(move || tidegate_identity::password::hash(password.expose()))
            .await
            .map_err(|_| ApiError::internal("password hashing failed"))?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let user = shared
        .store
        .create_user(&NewUser {
            tenant_id: shared.tenant_id.clone(),
            display_name: req.display_name.unwrap_or_else(|| req.username.clone()),
            username: req.username,
            email: req.email.unwrap_or_else(|| NO_EMAIL.to_owned()),
            password_hash: Some(PasswordHash::new(hash)),
            oidc: None,
        })
        .await?;
    ctx.note(|n| n.target_id = Some(user.id.clone()));
    Ok((StatusCode::CREATED, Json(shared.user_view(user).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUser {
    disabled: Option<bool>,
    display_name: Option<String>,
    email: Option<String>,
}

/// Changes a user. Disabling it ends its sessions at once.
#[utoipa::path(
    operation_id = "users_update",
    patch,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id")),
    request_body = UpdateUser,
    responses((status = 200, description = "The user changed", body = UserView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("users_manage")))
)]
pub(crate) async fn update(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    manager(&ctx).await?;
    let shared = &ctx.shared;
    let mut user = shared.user(&id).await?;
    if let Some(disabled) = req.disabled {
        user.disabled = disabled;
    }
    if let Some(name) = req.display_name {
        user.display_name = name;
    }
    if let Some(email) = req.email {
        user.email = email;
    }
    ctx.note(|n| n.detail = serde_json::json!({"disabled": req.disabled}));
    let user = shared.store.update_user(&user).await?;
    if user.disabled {
        shared
            .store
            .revoke_user_sessions(&user.id, now_ms())
            .await?;
    }
    Ok(Json(shared.user_view(user).await?))
}

/// The caller, the user and the role of a system-role change the caller may make.
async fn system_role_change(
    ctx: &Ctx,
    id: &str,
    role: &str,
) -> Result<(User, SystemRole), ApiError> {
    let caller = manager(ctx).await?;
    let shared = &ctx.shared;
    let role: SystemRole = role
        .parse()
        .map_err(|e: tidegate_rbac::Error| ApiError::bad_request(e.to_string()))?;
    let user = shared.user(id).await?;
    let may = {
        let _synced = shared.synced(&caller, None).await?;
        shared.authz.may_grant_system(&caller.subject, role).await?
    };
    if !may {
        return Err(ApiError::forbidden(format!(
            "granting or revoking the system role `{role}` needs it and `data_admin`"
        )));
    }
    Ok((user, role))
}

#[utoipa::path(
    operation_id = "users_grant_system_role",
    put,
    path = "/api/v1/users/{id}/system-roles/{role}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id"), ("role" = String, Path, description = "A system role: data_admin, data_product_manager, data_space_creator or data_services_contributor")),
    responses((status = 200, description = "The user with the role", body = UserView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("users_manage")))
)]
pub(crate) async fn grant_system_role(
    ctx: Ctx,
    Path((id, role)): Path<(String, String)>,
) -> Result<Json<UserView>, ApiError> {
    let (user, role) = system_role_change(&ctx, &id, &role).await?;
    let shared = &ctx.shared;
    match shared
        .store
        .grant_system_role(&user.id, role.as_str())
        .await
    {
        // Granting a role the user holds changes nothing.
        Ok(_) | Err(tidegate_metadata::Error::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Json(shared.user_view(user).await?))
}

#[utoipa::path(
    operation_id = "users_revoke_system_role",
    delete,
    path = "/api/v1/users/{id}/system-roles/{role}",
    tag = "users",
    params(("id" = String, Path, description = "The user's id"), ("role" = String, Path, description = "A system role")),
    responses((status = 200, description = "The user without the role", body = UserView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("users_manage")))
)]
pub(crate) async fn revoke_system_role(
    ctx: Ctx,
    Path((id, role)): Path<(String, String)>,
) -> Result<Json<UserView>, ApiError> {
    let (user, role) = system_role_change(&ctx, &id, &role).await?;
    let shared = &ctx.shared;
    shared
        .store
        .revoke_system_role(&user.id, role.as_str())
        .await?;
    Ok(Json(shared.user_view(user).await?))
}
