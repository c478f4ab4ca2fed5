//! Role-based access control for the control plane, on casbin, deny by default.
//!
//! # The model
//!
//! * A **subject** (a user, a service token, an operator token) holds **space roles**
//!   ([`SpaceRole`]) in data spaces and **system roles** ([`SystemRole`]) across the
//!   installation.
//! * An [`Action`] is either space-scoped (the request names a data space) or system-wide
//!   ([`Action::scope`]).
//! * One table in this crate says which roles hold which action; casbin's policies, the grant
//!   rule and the published matrix ([`matrix_markdown`], `docs/rbac.md`) are generated from it.
//!   A system role that holds a space-scoped action holds it in every space (this is how
//!   *Data Admin* administers all spaces).
//! * Actions of the data integration services (tasks in full, connections, gateway
//!   enrollment, running tasks) also need the system role
//!   [`SystemRole::DataServicesContributor`] on top of the space role
//!   ([`Action::needs_contributor`]); monitoring (listing tasks, reading runs and gateways)
//!   does not.
//! * Anything not granted is denied, including every request of an unknown subject.
//! * **No role can grant more than it has**: see [`Authorizer::may_grant`] and
//!   [`Authorizer::may_grant_system`].
//! * Reading secrets is no action at all: connections leave the API redacted, whoever asks.
//!
//! Outside the matrix sits the built-in break-glass **operator**
//! ([`Authorizer::add_operator`]): the subject of the control plane's bootstrap operator
//! tokens, allowed every action everywhere and every grant. It exists so that an installation
//! can be set up (and recovered) before any user holds a role.
//!
//! # Casbin
//!
//! RBAC with domains: a domain is a data space id; system roles and the operator live in the
//! reserved domain `@system` (space ids cannot start with `@`). Policy lines are
//! `(role, action, needed system role or "-")`; the matcher allows a request when the subject
//! holds the line's role in the request's space or system-wide, and holds the needed system
//! role.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tidegate_rbac::{Action, Authorizer, SpaceRole, SystemRole};
//!
//! let authz = Authorizer::new().await?;
//! authz.assign_space_role("user:ana", SpaceRole::CanEdit, "sp_1").await?;
//! assert!(authz.allowed("user:ana", Action::TaskList, Some("sp_1")).await?);
//! // Editing tasks is an integration action: it also needs Data Services Contributor.
//! assert!(!authz.allowed("user:ana", Action::TaskUpdate, Some("sp_1")).await?);
//! authz.assign_system_role("user:ana", SystemRole::DataServicesContributor).await?;
//! assert!(authz.allowed("user:ana", Action::TaskUpdate, Some("sp_1")).await?);
//! // Nothing in another space, and an editor cannot make anyone owner.
//! assert!(!authz.allowed("user:ana", Action::TaskList, Some("sp_2")).await?);
//! assert!(!authz.may_grant("user:ana", SpaceRole::Owner, "sp_1").await?);
//! # Ok::<(), tidegate_rbac::Error>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod model;

use std::collections::BTreeSet;

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi, RbacApi};
use tokio::sync::RwLock;

// The public interface.
pub use model::{Action, Scope, SpaceRole, SystemRole, matrix_markdown};

use model::{OPERATOR_ROLE, ROLE_PREFIX, space_role_name, system_role_name};

/// Why an authorization call failed. A denial is not an error: it is `Ok(false)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// casbin rejected the model or a policy.
    #[error("authorization engine: {0}")]
    Engine(String),
    /// A name that is no role or action.
    #[error("unknown {kind} `{name}`")]
    UnknownName {
        /// What was parsed: "space role", "system role" or "action".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A subject that cannot hold roles (empty, too long, control characters, or a role name).
    #[error("invalid subject `{0}`")]
    InvalidSubject(String),
    /// A data space id that is empty, too long, starts with `@` or has characters other than
    /// ASCII letters, digits, `_`, `-`, `.` and `:`.
    #[error("invalid data space id `{0}`")]
    InvalidSpace(String),
    /// A space-scoped action asked without a space, or a system-wide one with a space.
    #[error("action `{action}` is {scope}")]
    Scope {
        /// The action asked for.
        action: Action,
        /// Its scope.
        scope: Scope,
    },
}

impl Error {
    /// Whether trying again could succeed: never, these are programming or engine errors.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The casbin domain of system roles and the operator.
const SYSTEM_DOMAIN: &str = "@system";
const MAX_NAME: usize = 256;

const MODEL: &str = r#"
[request_definition]
r = sub, dom, act

[policy_definition]
p = sub, act, needs

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.act == p.act && (g(r.sub, p.sub, r.dom) || g(r.sub, p.sub, "@system")) && (p.needs == "-" || g(r.sub, p.needs, "@system"))
"#;

/// Decides whether a subject may perform an action, and who may grant which role.
///
/// Role assignments live in memory; the control plane persists them in its metadata store and
/// replays them with the `assign_*` methods at start. The `assign_*` and `revoke_*` methods do
/// not check who asks: an API handler calls [`Authorizer::may_grant`] (or
/// [`Authorizer::may_revoke`], [`Authorizer::may_grant_system`]) first.
pub struct Authorizer {
    enforcer: RwLock<Enforcer>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer with the matrix's policies and no role assignments.
    pub async fn new() -> Result<Self, Error> {
        let model = DefaultModel::from_str(MODEL).await.map_err(engine)?;
        let mut enforcer = Enforcer::new(model, MemoryAdapter::default())
            .await
            .map_err(engine)?;
        enforcer
            .add_policies(model::policies())
            .await
            .map_err(engine)?;
        Ok(Self {
            enforcer: RwLock::new(enforcer),
        })
    }

    /// Gives `subject` a role in data space `space`. Idempotent.
    pub async fn assign_space_role(
        &self,
        subject: &str,
        role: SpaceRole,
        space: &str,
    ) -> Result<(), Error> {
        self.add(subject, &space_role_name(role), checked_space(space)?)
            .await
    }

    /// Takes a role in `space` from `subject`; `Ok(false)` if it did not hold it.
    pub async fn revoke_space_role(
        &self,
        subject: &str,
        role: SpaceRole,
        space: &str,
    ) -> Result<bool, Error> {
        self.remove(subject, &space_role_name(role), checked_space(space)?)
            .await
    }

    /// Gives `subject` a system role. Idempotent.
    pub async fn assign_system_role(&self, subject: &str, role: SystemRole) -> Result<(), Error> {
        self.add(subject, &system_role_name(role), SYSTEM_DOMAIN)
            .await
    }

    /// Takes a system role from `subject`; `Ok(false)` if it did not hold it.
    pub async fn revoke_system_role(&self, subject: &str, role: SystemRole) -> Result<bool, Error> {
        self.remove(subject, &system_role_name(role), SYSTEM_DOMAIN)
            .await
    }

    /// Makes `subject` a break-glass operator: every action, everywhere, every grant. Outside
    /// the matrix; meant for the control plane's bootstrap operator tokens only.
    pub async fn add_operator(&self, subject: &str) -> Result<(), Error> {
        self.add(subject, OPERATOR_ROLE, SYSTEM_DOMAIN).await
    }

    /// Whether `subject` may perform `action`: in data space `space` for a space-scoped
    /// action, with `space` `None` for a system-wide one (a mismatch is [`Error::Scope`]).
    /// Unknown and invalid subjects are denied.
    pub async fn allowed(
        &self,
        subject: &str,
        action: Action,
        space: Option<&str>,
    ) -> Result<bool, Error> {
        let domain = match (action.scope(), space) {
            (Scope::Space, Some(space)) => checked_space(space)?,
            (Scope::System, None) => SYSTEM_DOMAIN,
            (scope, _) => return Err(Error::Scope { action, scope }),
        };
        if valid_subject(subject).is_err() {
            return Ok(false);
        }
        self.enforcer
            .read()
            .await
            .enforce((subject, domain, action.as_str()))
            .map_err(engine)
    }

    /// The roles `subject` holds in data space `space` (not counting system roles).
    pub async fn roles_of(&self, subject: &str, space: &str) -> Result<Vec<SpaceRole>, Error> {
        let space = checked_space(space)?;
        let held = self.role_names(subject, space).await;
        Ok(SpaceRole::ALL
            .iter()
            .copied()
            .filter(|&r| held.contains(&space_role_name(r)))
            .collect())
    }

    /// The system roles `subject` holds.
    pub async fn system_roles_of(&self, subject: &str) -> Result<Vec<SystemRole>, Error> {
        let held = self.role_names(subject, SYSTEM_DOMAIN).await;
        Ok(SystemRole::ALL
            .iter()
            .copied()
            .filter(|&r| held.contains(&system_role_name(r)))
            .collect())
    }

    /// Whether `granter` may grant `role` in `space` — "no role can grant more than it has".
    ///
    /// Allowed when the granter is an operator or a [`SystemRole::DataAdmin`] (who may appoint
    /// any role, owners included, in any space), or when the granter holds
    /// [`Action::MembersGrant`] in `space` **and** every action of `role` is among the actions
    /// its own roles hold there. So an owner may grant any role in its space and nothing
    /// elsewhere; a manager may grant `can_manage` and `can_view` but not `can_edit`; an editor grants
    /// nothing. Whether the grantee also holds Data Services Contributor is not the granter's
    /// concern: the grantee needs it to use the integration actions either way.
    pub async fn may_grant(
        &self,
        granter: &str,
        role: SpaceRole,
        space: &str,
    ) -> Result<bool, Error> {
        self.may_change(granter, role, space, Action::MembersGrant)
            .await
    }

    /// Whether `granter` may revoke `role` in `space`: the rule of [`Authorizer::may_grant`]
    /// with [`Action::MembersRevoke`], so nobody removes a role stronger than its own.
    pub async fn may_revoke(
        &self,
        granter: &str,
        role: SpaceRole,
        space: &str,
    ) -> Result<bool, Error> {
        self.may_change(granter, role, space, Action::MembersRevoke)
            .await
    }

    /// Whether `granter` may grant or revoke the system role `role`: an operator may; otherwise
    /// only a [`SystemRole::DataAdmin`] who holds `role` itself (so a Data Admin hands on Data
    /// Admin, and hands on Data Space Creator only if it is one).
    pub async fn may_grant_system(&self, granter: &str, role: SystemRole) -> Result<bool, Error> {
        if valid_subject(granter).is_err() {
            return Ok(false);
        }
        let held = self.role_names(granter, SYSTEM_DOMAIN).await;
        Ok(held.contains(OPERATOR_ROLE)
            || (held.contains(&system_role_name(SystemRole::DataAdmin))
                && held.contains(&system_role_name(role))))
    }

    async fn may_change(
        &self,
        granter: &str,
        role: SpaceRole,
        space: &str,
        change: Action,
    ) -> Result<bool, Error> {
        let space = checked_space(space)?;
        if valid_subject(granter).is_err() {
            return Ok(false);
        }
        let system = self.role_names(granter, SYSTEM_DOMAIN).await;
        if system.contains(OPERATOR_ROLE)
            || system.contains(&system_role_name(SystemRole::DataAdmin))
        {
            return Ok(true);
        }
        if !self.allowed(granter, change, Some(space)).await? {
            return Ok(false);
        }
        let in_space = self.role_names(granter, space).await;
        let mut held = BTreeSet::new();
        for r in SpaceRole::ALL {
            if in_space.contains(&space_role_name(*r)) {
                held.extend(r.actions());
            }
        }
        for r in SystemRole::ALL {
            if system.contains(&system_role_name(*r)) {
                held.extend(r.actions().filter(|a| a.scope() == Scope::Space));
            }
        }
        Ok(role.actions().all(|a| held.contains(&a)))
    }

    async fn role_names(&self, subject: &str, domain: &str) -> BTreeSet<String> {
        self.enforcer
            .read()
            .await
            .get_roles_for_user(subject, Some(domain))
            .into_iter()
            .collect()
    }

    async fn add(&self, subject: &str, role: &str, domain: &str) -> Result<(), Error> {
        valid_subject(subject)?;
        self.enforcer
            .write()
            .await
            .add_role_for_user(subject, role, Some(domain))
            .await
            .map_err(engine)?;
        Ok(())
    }

    async fn remove(&self, subject: &str, role: &str, domain: &str) -> Result<bool, Error> {
        valid_subject(subject)?;
        self.enforcer
            .write()
            .await
            .delete_role_for_user(subject, role, Some(domain))
            .await
            .map_err(engine)
    }
}

/// Subjects are never role names (a caller cannot pass `role:…` as itself), never empty and
/// carry no control characters.
fn valid_subject(subject: &str) -> Result<(), Error> {
    if subject.is_empty()
        || subject.len() > MAX_NAME
        || subject.starts_with(ROLE_PREFIX)
        || subject.chars().any(char::is_control)
    {
        return Err(Error::InvalidSubject(subject.escape_debug().to_string()));
    }
    Ok(())
}

fn checked_space(space: &str) -> Result<&str, Error> {
    let ok = !space.is_empty()
        && space.len() <= MAX_NAME
        && space
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(space)
    } else {
        Err(Error::InvalidSpace(space.escape_debug().to_string()))
    }
}

fn engine(e: casbin::Error) -> Error {
    Error::Engine(e.to_string())
}
