//! Data spaces and their members. Role changes follow the grant rule: nobody grants or
//! revokes a role with more rights than its own (`may_grant`, `may_revoke`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidegate_metadata::{DataSpace, MetadataStore, NewDataSpace, Page, PageRequest};
use tidegate_rbac::{Action, SpaceRole};

use super::{ApiError, Body, Ctx, ListQuery, Query, page_of, paginate};
use crate::Shared;

/// The spaces the caller holds a role in, or with `spaces_administer` every space of the
/// tenant.
#[utoipa::path(
    operation_id = "spaces_list",
    get,
    path = "/api/v1/spaces",
    tag = "spaces",
    params(ListQuery),
    responses((status = 200, description = "The spaces where the caller holds a role; every space with spaces_administer", body = Page<DataSpace>), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn list(
    ctx: Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<DataSpace>>, ApiError> {
    let caller = ctx.caller().await?;
    let shared = &ctx.shared;
    if q.space_id.is_some() {
        return Err(ApiError::bad_request(
            "space_id does not filter data spaces",
        ));
    }
    if shared
        .allowed(&caller, Action::SpacesAdminister, None)
        .await?
    {
        let page = shared.store.spaces(&shared.tenant_id, &q.page()).await?;
        return Ok(page_of(page, |s| s));
    }
    let Some(user) = caller.user() else {
        return Ok(Json(Page {
            items: Vec::new(),
            next: None,
        }));
    };
    let mut ids: Vec<String> = shared
        .space_assignments_of(&user.id)
        .await?
        .into_iter()
        .map(|a| a.space_id)
        .collect();
    ids.sort();
    ids.dedup();
    let ids = paginate(ids, String::as_str, q.limit, q.after.as_deref())?;
    let mut items = Vec::with_capacity(ids.items.len());
    for id in &ids.items {
        items.push(shared.store.space(id).await?);
    }
    Ok(Json(Page {
        items,
        next: ids.next,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSpace {
    name: String,
    #[serde(default)]
    description: String,
}

/// Creates a data space; a user who creates one becomes its owner.
#[utoipa::path(
    operation_id = "spaces_create",
    post,
    path = "/api/v1/spaces",
    tag = "spaces",
    request_body = CreateSpace,
    responses((status = 201, description = "The space created", body = DataSpace), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("space_create")))
)]
pub(crate) async fn create(
    ctx: Ctx,
    Body(req): Body<CreateSpace>,
) -> Result<(StatusCode, Json<DataSpace>), ApiError> {
    let caller = ctx.caller().await?;
    ctx.check(&caller, Action::SpaceCreate, None).await?;
    let shared = &ctx.shared;
    let space = shared
        .store
        .create_space(&NewDataSpace {
            tenant_id: shared.tenant_id.clone(),
            name: req.name,
            description: req.description,
        })
        .await?;
    ctx.note(|n| {
        n.target_id = Some(space.id.clone());
        n.space_id = Some(space.id.clone());
    });
    if let Some(user) = caller.user() {
        shared
            .store
            .grant_space_role(&user.id, &space.id, SpaceRole::Owner.as_str())
            .await?;
    }
    Ok((StatusCode::CREATED, Json(space)))
}

#[utoipa::path(
    operation_id = "spaces_show",
    get,
    path = "/api/v1/spaces/{id}",
    tag = "spaces",
    params(("id" = String, Path, description = "The data space's id")),
    responses((status = 200, description = "The space", body = DataSpace), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("space_read")))
)]
pub(crate) async fn show(ctx: Ctx, Path(id): Path<String>) -> Result<Json<DataSpace>, ApiError> {
    let (_, space) = ctx.in_space(Some(&id), Action::SpaceRead).await?;
    Ok(Json(space))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateSpace {
    name: Option<String>,
    description: Option<String>,
}

#[utoipa::path(
    operation_id = "spaces_update",
    patch,
    path = "/api/v1/spaces/{id}",
    tag = "spaces",
    params(("id" = String, Path, description = "The data space's id")),
    request_body = UpdateSpace,
    responses((status = 200, description = "The space changed", body = DataSpace), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("space_update")))
)]
pub(crate) async fn update(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<UpdateSpace>,
) -> Result<Json<DataSpace>, ApiError> {
    let (_, mut space) = ctx.in_space(Some(&id), Action::SpaceUpdate).await?;
    if let Some(name) = req.name {
        space.name = name;
    }
    if let Some(description) = req.description {
        space.description = description;
    }
    Ok(Json(ctx.shared.store.update_space(&space).await?))
}

/// Deletes an empty data space (not the default one).
#[utoipa::path(
    operation_id = "spaces_delete",
    delete,
    path = "/api/v1/spaces/{id}",
    tag = "spaces",
    params(("id" = String, Path, description = "The data space's id")),
    responses((status = 200, description = "The space deleted", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("space_delete")))
)]
pub(crate) async fn delete(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, space) = ctx.in_space(Some(&id), Action::SpaceDelete).await?;
    if space.id == ctx.shared.default_space_id {
        return Err(ApiError::conflict(
            "the default data space cannot be deleted",
        ));
    }
    ctx.shared.store.delete_space(&space.id).await?;
    Ok(Json(json!({"id": space.id, "deleted": true})))
}

/// A member of a data space: a user and the roles it holds there.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Member {
    user_id: String,
    username: String,
    roles: Vec<String>,
}

/// The members of a space, by user id.
#[utoipa::path(
    operation_id = "spaces_members",
    get,
    path = "/api/v1/spaces/{id}/members",
    tag = "spaces",
    params(("id" = String, Path, description = "The data space's id"), ListQuery),
    responses((status = 200, description = "A page of members with their roles", body = Page<Member>), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("members_list")))
)]
pub(crate) async fn members(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<Member>>, ApiError> {
    let (_, space) = ctx.in_space(Some(&id), Action::MembersList).await?;
    if q.space_id.is_some() {
        return Err(ApiError::bad_request("the data space is in the path"));
    }
    let shared = &ctx.shared;
    let roles = shared.members_of(&space.id).await?;
    let users: Vec<(String, Vec<String>)> = roles.into_iter().collect();
    let page = paginate(users, |(id, _)| id.as_str(), q.limit, q.after.as_deref())?;
    let mut items = Vec::with_capacity(page.items.len());
    for (user_id, roles) in page.items {
        let username = shared.user(&user_id).await?.username;
        items.push(Member {
            user_id,
            username,
            roles,
        });
    }
    Ok(Json(Page {
        items,
        next: page.next,
    }))
}

impl Shared {
    /// Every role assignment of a space, by user.
    async fn members_of(&self, space_id: &str) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut page = PageRequest::first(tidegate_metadata::MAX_PAGE_LIMIT);
        loop {
            let found = self.store.space_members(space_id, &page).await?;
            for a in found.items {
                users.entry(a.user_id).or_default().push(a.role);
            }
            match found.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        // Roles in the catalogue's order, as everywhere else in the API.
        let rank = |role: &String| SpaceRole::ALL.iter().position(|r| r.as_str() == role);
        for roles in users.values_mut() {
            roles.sort_by_key(rank);
        }
        Ok(users)
    }
}

/// Whether a role change is a grant or a revocation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Grant,
    Revoke,
}

/// Checks a role change in a space: the action, then the grant rule; 403 if either says no.
async fn change_role(
    ctx: &Ctx,
    space_id: &str,
    user_id: &str,
    role: &str,
    change: Change,
) -> Result<Json<serde_json::Value>, ApiError> {
    let action = match change {
        Change::Grant => Action::MembersGrant,
        Change::Revoke => Action::MembersRevoke,
    };
    let (caller, space) = ctx.in_space(Some(space_id), action).await?;
    let shared = &ctx.shared;
    ctx.note(|n| n.target_id = Some(user_id.to_owned()));
    let role: SpaceRole = role
        .parse()
        .map_err(|e: tidegate_rbac::Error| ApiError::bad_request(e.to_string()))?;
    let user = shared.user(user_id).await?;
    let may = {
        let _synced = shared.synced(&caller, Some(&space.id)).await?;
        match change {
            Change::Grant => {
                shared
                    .authz
                    .may_grant(&caller.subject, role, &space.id)
                    .await?
            }
            Change::Revoke => {
                shared
                    .authz
                    .may_revoke(&caller.subject, role, &space.id)
                    .await?
            }
        }
    };
    if !may {
        return Err(ApiError::forbidden(format!(
            "`{action}` of the role `{role}` is refused: no role can grant or revoke more \
             than it holds"
        )));
    }
    let changed = match change {
        Change::Grant => match shared
            .store
            .grant_space_role(&user.id, &space.id, role.as_str())
            .await
        {
            Ok(_) => true,
            // Granting a role the user holds changes nothing.
            Err(tidegate_metadata::Error::Conflict(_)) => false,
            Err(e) => return Err(e.into()),
        },
        Change::Revoke => {
            shared
                .store
                .revoke_space_role(&user.id, &space.id, role.as_str())
                .await?
        }
    };
    let roles: Vec<&str> = shared
        .space_roles(&user.id, &space.id)
        .await?
        .iter()
        .map(|r| r.as_str())
        .collect();
    Ok(Json(json!({
        "space_id": space.id, "user_id": user.id, "username": user.username,
        "roles": roles, "changed": changed,
    })))
}

#[utoipa::path(
    operation_id = "spaces_grant",
    put,
    path = "/api/v1/spaces/{id}/members/{user_id}/roles/{role}",
    tag = "spaces",
    params(("id" = String, Path, description = "The data space's id"), ("user_id" = String, Path, description = "The user's id"), ("role" = String, Path, description = "A space role: owner, can_view, can_consume, can_manage, can_operate or can_edit")),
    responses((status = 200, description = "The member's roles", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("members_grant")))
)]
pub(crate) async fn grant(
    ctx: Ctx,
    Path((space, user, role)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change_role(&ctx, &space, &user, &role, Change::Grant).await
}

#[utoipa::path(
    operation_id = "spaces_revoke",
    delete,
    path = "/api/v1/spaces/{id}/members/{user_id}/roles/{role}",
    tag = "spaces",
    params(("id" = String, Path, description = "The data space's id"), ("user_id" = String, Path, description = "The user's id"), ("role" = String, Path, description = "A space role")),
    responses((status = 200, description = "The member's roles", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("members_revoke")))
)]
pub(crate) async fn revoke(
    ctx: Ctx,
    Path((space, user, role)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change_role(&ctx, &space, &user, &role, Change::Revoke).await
}
