//! Who is asking, and may they: authentication of bearer tokens and authorization of one
//! action in one data space.
//!
//! The metadata database is the source of truth for role assignments. The `Authorizer` holds
//! them in memory, so before each decision the caller's system roles and its roles in the
//! space concerned are read from the store and the `Authorizer` is brought in line. Several
//! control planes sharing one database therefore agree, and a role revoked anywhere is gone
//! at the next request.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use tidegate_identity::session::digest_presented;
use tidegate_metadata::{
    DataSpace, MetadataStore, PageRequest, SpaceRoleAssignment, TokenDigest, User,
};
use tidegate_rbac::{Action, Scope, SpaceRole, SystemRole};

use super::{ApiError, Ctx, now_ms};
use crate::Shared;

/// The casbin subject of the i-th configured operator token.
pub(crate) fn operator_subject(i: usize) -> String {
    format!("operator:{i}")
}

/// The casbin subject of a user.
pub(crate) fn user_subject(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// Whoever presented a valid bearer token.
#[derive(Debug)]
pub(crate) enum Principal {
    /// A break-glass operator token (its index in the configuration).
    Operator(usize),
    /// A user with a valid login session.
    User {
        user: Box<User>,
        /// The login session the token opened.
        session_id: String,
    },
}

/// An authenticated caller.
#[derive(Debug)]
pub(crate) struct Caller {
    pub(crate) principal: Principal,
    /// Its casbin subject.
    pub(crate) subject: String,
}

impl Caller {
    /// Who did it, as the audit log names it: the user's id or the operator's subject.
    pub(crate) fn actor(&self) -> String {
        match &self.principal {
            Principal::Operator(i) => operator_subject(*i),
            Principal::User { user, .. } => user.id.clone(),
        }
    }

    /// The user, if the caller is one.
    pub(crate) fn user(&self) -> Option<&User> {
        match &self.principal {
            Principal::User { user, .. } => Some(user),
            Principal::Operator(_) => None,
        }
    }
}

impl Ctx {
    /// The caller, from its bearer token: a login session (`tgs_…`) of a user who is not
    /// disabled, or an operator token. Anything else is 401.
    pub(crate) async fn caller(&self) -> Result<Caller, ApiError> {
        let caller = self.authenticate().await?;
        self.note(|n| n.actor = caller.actor());
        Ok(caller)
    }

    /// Checks that `caller` holds `action` in `space` (for a space-scoped action) or
    /// system-wide (`space` is `None`); 403 names the action. The space goes to the audit
    /// event.
    pub(crate) async fn check(
        &self,
        caller: &Caller,
        action: Action,
        space: Option<&str>,
    ) -> Result<(), ApiError> {
        if let Some(space) = space {
            self.note(|n| n.space_id = Some(space.to_owned()));
        }
        if self.shared.allowed(caller, action, space).await? {
            Ok(())
        } else {
            Err(denied(action, space))
        }
    }

    /// Authenticates the caller, finds the data space named (the default one for `None`; 404
    /// if there is none) and checks that the caller holds `action` there.
    pub(crate) async fn in_space(
        &self,
        space: Option<&str>,
        action: Action,
    ) -> Result<(Caller, DataSpace), ApiError> {
        let caller = self.caller().await?;
        let space = self.shared.space_or_default(space).await?;
        self.check(&caller, action, Some(&space.id)).await?;
        Ok((caller, space))
    }

    async fn authenticate(&self) -> Result<Caller, ApiError> {
        let token = self
            .token
            .as_deref()
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let shared = &self.shared;
        if token.starts_with(tidegate_identity::session::PREFIX) {
            let invalid = || ApiError::unauthorized("the session is invalid, expired or revoked");
            // Malformed tokens never reach the database.
            digest_presented(token).ok_or_else(invalid)?;
            let (session, user) = match shared
                .store
                .valid_session_user(&TokenDigest::of(token), now_ms())
                .await
            {
                Ok(found) => found,
                Err(tidegate_metadata::Error::NotFound { .. }) => return Err(invalid()),
                Err(e) => return Err(e.into()),
            };
            if user.disabled || user.tenant_id != shared.tenant_id {
                return Err(invalid());
            }
            return Ok(Caller {
                subject: user_subject(&user.id),
                principal: Principal::User {
                    user: Box::new(user),
                    session_id: session.id,
                },
            });
        }
        let digest = Sha256::digest(token.as_bytes());
        shared
            .config
            .operator_tokens
            .iter()
            .position(|t| Sha256::digest(t.expose().as_bytes()) == digest)
            .map(|i| Caller {
                principal: Principal::Operator(i),
                subject: operator_subject(i),
            })
            .ok_or_else(|| ApiError::unauthorized("unknown bearer token"))
    }
}

impl Shared {
    /// Whether `caller` holds `action`, with its roles read from the store first.
    pub(crate) async fn allowed(
        &self,
        caller: &Caller,
        action: Action,
        space: Option<&str>,
    ) -> Result<bool, ApiError> {
        let space = match action.scope() {
            Scope::Space => Some(space.ok_or_else(|| {
                ApiError::internal(format!("`{action}` asked without a data space"))
            })?),
            Scope::System => None,
        };
        let _synced = self.synced(caller, space).await?;
        Ok(self.authz.allowed(&caller.subject, action, space).await?)
    }

    /// Reads the caller's system roles and its roles in `space` from the store and brings the
    /// `Authorizer` in line. Decide while holding the returned guard: no other request changes
    /// the `Authorizer` meanwhile. Operators hold no stored roles.
    pub(crate) async fn synced(
        &self,
        caller: &Caller,
        space: Option<&str>,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
        let Some(user) = caller.user() else {
            return Ok(self.authz_lock.lock().await);
        };
        let held = self.store.held_roles(&user.id, space).await?;
        // A role name this version does not know grants nothing.
        let system: BTreeSet<SystemRole> =
            held.system.iter().filter_map(|r| r.parse().ok()).collect();
        let in_space = space.map(|space| {
            let roles: BTreeSet<SpaceRole> = held
                .in_space
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect();
            (space, roles)
        });
        let guard = self.authz_lock.lock().await;
        let subject = &caller.subject;
        let held: BTreeSet<SystemRole> = self
            .authz
            .system_roles_of(subject)
            .await?
            .into_iter()
            .collect();
        for role in system.difference(&held) {
            self.authz.assign_system_role(subject, *role).await?;
        }
        for role in held.difference(&system) {
            self.authz.revoke_system_role(subject, *role).await?;
        }
        if let Some((space, stored)) = in_space {
            let held: BTreeSet<SpaceRole> = self
                .authz
                .roles_of(subject, space)
                .await?
                .into_iter()
                .collect();
            for role in stored.difference(&held) {
                self.authz.assign_space_role(subject, *role, space).await?;
            }
            for role in held.difference(&stored) {
                self.authz.revoke_space_role(subject, *role, space).await?;
            }
        }
        Ok(guard)
    }

    /// The roles a user holds in a data space, as stored.
    pub(crate) async fn space_roles(
        &self,
        user_id: &str,
        space: &str,
    ) -> Result<BTreeSet<SpaceRole>, ApiError> {
        Ok(self
            .space_assignments_of(user_id)
            .await?
            .iter()
            .filter(|a| a.space_id == space)
            .filter_map(|a| a.role.parse::<SpaceRole>().ok())
            .collect())
    }

    /// Every role a user holds in data spaces, oldest grant first.
    pub(crate) async fn space_assignments_of(
        &self,
        user_id: &str,
    ) -> Result<Vec<SpaceRoleAssignment>, ApiError> {
        let mut all = Vec::new();
        let mut page = PageRequest::first(tidegate_metadata::MAX_PAGE_LIMIT);
        loop {
            let found = self.store.space_roles_of_user(user_id, &page).await?;
            all.extend(found.items);
            match found.next {
                Some(next) => page.after = Some(next),
                None => return Ok(all),
            }
        }
    }
}

/// 403 naming the action (and the space).
pub(crate) fn denied(action: Action, space: Option<&str>) -> ApiError {
    ApiError::forbidden(match space {
        Some(space) => format!("`{action}` is not granted in data space {space}"),
        None => format!("`{action}` is not granted"),
    })
}
