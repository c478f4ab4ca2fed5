//! Role-based access control for the control plane, on casbin, deny by default.
//!
//! A request is allowed only if a policy line grants the subject's role the action on the
//! resource kind; anything not granted is denied. Roles are assigned to subjects (users,
//! operators, service tokens) with [`Authorizer::assign`].
//!
//! The system role [`SystemRole::Operator`] is what a control plane's bootstrap operator token
//! carries. The data-space and remaining system roles are added with the governance work.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi, RbacApi};
use tokio::sync::RwLock;

/// Why an authorization call failed (not a denial: a denial is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// casbin rejected the model or a policy.
    #[error("authorization engine: {0}")]
    Engine(String),
}

/// Kinds of resources the control plane guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Gateways and their enrollment.
    Gateway,
    /// Connections (and their credentials).
    Connection,
    /// Data tasks.
    Task,
    /// Task runs.
    Run,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Gateway => "gateway",
            Resource::Connection => "connection",
            Resource::Task => "task",
            Resource::Run => "run",
        }
    }
}

/// What a request does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read.
    Read,
    /// Create or change.
    Write,
    /// Start, stop or resume.
    Operate,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Operate => "operate",
        }
    }
}

/// System-wide roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemRole {
    /// Runs the control plane: may do everything.
    Operator,
    /// May look, change nothing.
    Viewer,
}

impl SystemRole {
    fn as_str(self) -> &'static str {
        match self {
            SystemRole::Operator => "role:operator",
            SystemRole::Viewer => "role:viewer",
        }
    }
}

const MODEL: &str = r#"
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act
"#;

/// Decides whether a subject may perform an action on a resource kind.
pub struct Authorizer {
    enforcer: RwLock<Enforcer>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer with the built-in role grants and no role assignments.
    pub async fn new() -> Result<Self, Error> {
        let model = DefaultModel::from_str(MODEL).await.map_err(engine)?;
        let mut enforcer = Enforcer::new(model, MemoryAdapter::default())
            .await
            .map_err(engine)?;
        let resources = [
            Resource::Gateway,
            Resource::Connection,
            Resource::Task,
            Resource::Run,
        ];
        let mut grants = Vec::new();
        for r in resources {
            for a in [Action::Read, Action::Write, Action::Operate] {
                grants.push(grant(SystemRole::Operator, r, a));
            }
            grants.push(grant(SystemRole::Viewer, r, Action::Read));
        }
        enforcer.add_policies(grants).await.map_err(engine)?;
        Ok(Self {
            enforcer: RwLock::new(enforcer),
        })
    }

    /// Gives `subject` a system role.
    pub async fn assign(&self, subject: &str, role: SystemRole) -> Result<(), Error> {
        self.enforcer
            .write()
            .await
            .add_role_for_user(subject, role.as_str(), None)
            .await
            .map_err(engine)?;
        Ok(())
    }

    /// Whether `subject` may perform `action` on `resource`. Unknown subjects are denied.
    pub async fn allowed(
        &self,
        subject: &str,
        resource: Resource,
        action: Action,
    ) -> Result<bool, Error> {
        // Subjects are never role names: a caller cannot pass "role:operator" as itself.
        if subject.starts_with("role:") {
            return Ok(false);
        }
        self.enforcer
            .read()
            .await
            .enforce((subject, resource.as_str(), action.as_str()))
            .map_err(engine)
    }
}

fn grant(role: SystemRole, resource: Resource, action: Action) -> Vec<String> {
    vec![
        role.as_str().to_owned(),
        resource.as_str().to_owned(),
        action.as_str().to_owned(),
    ]
}

fn engine(e: casbin::Error) -> Error {
    Error::Engine(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deny_by_default_and_role_grants() {
        let authz = Authorizer::new().await.unwrap();
        authz.assign("alice", SystemRole::Operator).await.unwrap();
        authz.assign("victor", SystemRole::Viewer).await.unwrap();
        let resources = [
            Resource::Gateway,
            Resource::Connection,
            Resource::Task,
            Resource::Run,
        ];
        for r in resources {
            for a in [Action::Read, Action::Write, Action::Operate] {
                assert!(authz.allowed("alice", r, a).await.unwrap(), "{r:?} {a:?}");
                assert_eq!(
                    authz.allowed("victor", r, a).await.unwrap(),
                    a == Action::Read,
                    "viewer {r:?} {a:?}"
                );
                assert!(!authz.allowed("mallory", r, a).await.unwrap());
                assert!(!authz.allowed("role:operator", r, a).await.unwrap());
                assert!(!authz.allowed("", r, a).await.unwrap());
            }
        }
    }
}
