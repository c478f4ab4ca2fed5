//! The roles, the actions and the matrix that joins them: data, not code.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Defines a fieldless enum with a stable snake_case name per variant, an `ALL` array,
/// `as_str`, `Display` and `FromStr`. Serde uses the same names (`rename_all`), checked by a
/// test.
macro_rules! named {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $( $(#[doc = $doc:literal])+ $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[doc = $doc])+ $variant, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant),*];

            /// The stable snake_case name (used in policies, the API and the docs).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// What it means, in one sentence (its documentation, as published in
            /// `docs/rbac.md`).
            pub fn description(self) -> &'static str {
                match self {
                    $($name::$variant => concat!($($doc),+).trim(),)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(Error::UnknownName { kind: $kind, name: s.to_owned() }),
                }
            }
        }
    };
}

named! {
    /// A role a subject holds in one data space.
    pub enum SpaceRole ("space role") {
        /// *Is owner*: everything in the space, including granting access.
        Owner = "owner",
        /// *Can view*: monitor pipelines, change nothing.
        CanView = "can_view",
        /// *Can consume*: consume the data the space's tasks produce.
        CanConsume = "can_consume",
        /// *Can manage*: the space's details and members.
        CanManage = "can_manage",
        /// *Can operate*: see tasks with basic details; run, stop and resume them.
        CanOperate = "can_operate",
        /// *Can edit*: see and edit tasks, create data assets.
        CanEdit = "can_edit",
    }
}

named! {
    /// A role a subject holds across the whole installation.
    pub enum SystemRole ("system role") {
        /// *Data Admin*: manages every data space's details and membership (and may appoint
        /// owners), but not the spaces' tasks, connections or data.
        DataAdmin = "data_admin",
        /// *Data Product Manager*: creates data products.
        DataProductManager = "data_product_manager",
        /// *Data Space Creator*: creates data spaces.
        DataSpaceCreator = "data_space_creator",
        /// *Data Services Contributor*: may use the data integration services at all. Grants
        /// nothing alone; every action marked "needs contributor" requires it on top of the
        /// space role.
        DataServicesContributor = "data_services_contributor",
    }
}

named! {
    /// What a request does. Each action is either space-scoped or system-wide
    /// ([`Action::scope`]).
    pub enum Action ("action") {
        /// See the space's details.
        SpaceRead = "space_read",
        /// Change the space's details.
        SpaceUpdate = "space_update",
        /// Delete the space.
        SpaceDelete = "space_delete",
        /// List the space's members and their roles.
        MembersList = "members_list",
        /// Grant a space role (also subject to the grant rule).
        MembersGrant = "members_grant",
        /// Revoke a space role (also subject to the grant rule).
        MembersRevoke = "members_revoke",
        /// List tasks with basic details (name, state, last run): monitoring.
        TaskList = "task_list",
        /// Read a task in full, settings included.
        TaskRead = "task_read",
        /// Create a task.
        TaskCreate = "task_create",
        /// Change a task.
        TaskUpdate = "task_update",
        /// Delete a task.
        TaskDelete = "task_delete",
        /// Start a run of a task.
        TaskRun = "task_run",
        /// Stop a task's run.
        TaskStop = "task_stop",
        /// Resume a stopped or failed run.
        TaskResume = "task_resume",
        /// Monitor runs: state, counts, error texts.
        RunRead = "run_read",
        /// Read connections (always redacted: secrets by name only).
        ConnectionRead = "connection_read",
        /// Create a connection.
        ConnectionCreate = "connection_create",
        /// Change a connection.
        ConnectionUpdate = "connection_update",
        /// Delete a connection.
        ConnectionDelete = "connection_delete",
        /// Test that a connection reaches its database.
        ConnectionTest = "connection_test",
        /// See the space's gateways and whether they are online.
        GatewayRead = "gateway_read",
        /// Create gateways and their enrollment tokens, revoke them.
        GatewayManage = "gateway_manage",
        /// Consume the data the space's tasks produce.
        DataConsume = "data_consume",
        /// Create a data asset in the space.
        DataAssetCreate = "data_asset_create",
        /// Read the space's audit log.
        AuditRead = "audit_read",
        /// Create a data space (system-wide).
        SpaceCreate = "space_create",
        /// List every data space and act as its administrator (system-wide).
        SpacesAdminister = "spaces_administer",
        /// Create a data product (system-wide).
        DataProductCreate = "data_product_create",
        /// Manage local users: list, create and disable them, grant system roles (system-wide).
        UsersManage = "users_manage",
        /// Turn the tenant's AI assist on or off and choose its region (system-wide).
        AssistConfigure = "assist_configure",
    }
}

/// Where an action applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Inside one data space: the request names the space.
    Space,
    /// Across the installation: the request names no space.
    System,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Space => "space-scoped",
            Scope::System => "system-wide",
        })
    }
}

/// One row of the matrix: who holds an action.
#[derive(Debug)]
struct Row {
    action: Action,
    scope: Scope,
    /// Space roles that hold the action in their space.
    space: &'static [SpaceRole],
    /// System roles that hold it (in every space, for a space-scoped action).
    system: &'static [SystemRole],
    /// Whether the subject must also hold [`SystemRole::DataServicesContributor`].
    contributor: bool,
}

use Action as A;
use SpaceRole::{
    CanConsume as CONSUME, CanEdit as EDIT, CanManage as MANAGE, CanOperate as OPERATE,
    CanView as VIEW, Owner as OWNER,
};
use SystemRole::{DataAdmin as ADMIN, DataProductManager as PRODUCT, DataSpaceCreator as CREATOR};

const fn row(
    action: Action,
    space: &'static [SpaceRole],
    system: &'static [SystemRole],
    contributor: bool,
) -> Row {
    Row {
        action,
        scope: Scope::Space,
        space,
        system,
        contributor,
    }
}

const fn system(action: Action, system: &'static [SystemRole]) -> Row {
    Row {
        action,
        scope: Scope::System,
        space: &[],
        system,
        contributor: false,
    }
}

const ALL_MEMBERS: &[SpaceRole] = &[OWNER, VIEW, CONSUME, MANAGE, OPERATE, EDIT];
/// Who sees the space's pipelines. A manager does too, so that it can onboard viewers (it can
/// only grant roles whose every action it holds).
const MONITORS: &[SpaceRole] = &[OWNER, VIEW, MANAGE, OPERATE, EDIT];

/// The matrix, one row per action in [`Action::ALL`] order. Casbin's policies, the published
/// tables and the grant rule are all derived from it.
const MATRIX: &[Row] = &[
    row(A::SpaceRead, ALL_MEMBERS, &[ADMIN], false),
    row(A::SpaceUpdate, &[OWNER, MANAGE], &[ADMIN], false),
    row(A::SpaceDelete, &[OWNER], &[ADMIN], false),
    row(A::MembersList, &[OWNER, MANAGE], &[ADMIN], false),
    row(A::MembersGrant, &[OWNER, MANAGE], &[ADMIN], false),
    row(A::MembersRevoke, &[OWNER, MANAGE], &[ADMIN], false),
    row(A::TaskList, MONITORS, &[], false),
    row(A::TaskRead, &[OWNER, EDIT], &[], true),
    row(A::TaskCreate, &[OWNER, EDIT], &[], true),
    row(A::TaskUpdate, &[OWNER, EDIT], &[], true),
    row(A::TaskDelete, &[OWNER, EDIT], &[], true),
    row(A::TaskRun, &[OWNER, OPERATE], &[], true),
    row(A::TaskStop, &[OWNER, OPERATE], &[], true),
    row(A::TaskResume, &[OWNER, OPERATE], &[], true),
    row(A::RunRead, MONITORS, &[], false),
    row(A::ConnectionRead, &[OWNER, EDIT], &[], true),
    row(A::ConnectionCreate, &[OWNER, EDIT], &[], true),
    row(A::ConnectionUpdate, &[OWNER, EDIT], &[], true),
    row(A::ConnectionDelete, &[OWNER, EDIT], &[], true),
    row(A::ConnectionTest, &[OWNER, OPERATE, EDIT], &[], true),
    row(A::GatewayRead, MONITORS, &[], false),
    row(A::GatewayManage, &[OWNER], &[], true),
    row(A::DataConsume, &[OWNER, CONSUME], &[], false),
    row(A::DataAssetCreate, &[OWNER, EDIT], &[], false),
    row(A::AuditRead, &[OWNER, MANAGE], &[ADMIN], false),
    system(A::SpaceCreate, &[CREATOR]),
    system(A::SpacesAdminister, &[ADMIN]),
    system(A::DataProductCreate, &[PRODUCT]),
    system(A::UsersManage, &[ADMIN]),
    system(A::AssistConfigure, &[ADMIN]),
];

fn row_of(action: Action) -> &'static Row {
    // `matrix_rows_follow_action_order` checks that row i is action i, for every action.
    &MATRIX[action as usize]
}

impl Action {
    /// Whether the action applies inside one data space or system-wide.
    pub fn scope(self) -> Scope {
        row_of(self).scope
    }

    /// Whether the action also requires [`SystemRole::DataServicesContributor`].
    pub fn needs_contributor(self) -> bool {
        row_of(self).contributor
    }
}

impl SpaceRole {
    /// The actions this role holds in its space, in [`Action::ALL`] order.
    pub fn actions(self) -> impl Iterator<Item = Action> {
        MATRIX
            .iter()
            .filter(move |r| r.space.contains(&self))
            .map(|r| r.action)
    }
}

impl SystemRole {
    /// The actions this role holds: system-wide ones, and space-scoped ones in every space.
    pub fn actions(self) -> impl Iterator<Item = Action> {
        MATRIX
            .iter()
            .filter(move |r| r.system.contains(&self))
            .map(|r| r.action)
    }
}

/// Casbin policy lines `(role, action, needed system role or "-")` generated from the matrix.
pub(crate) fn policies() -> Vec<Vec<String>> {
    let mut lines = Vec::new();
    for r in MATRIX {
        let needs = if r.contributor {
            system_role_name(SystemRole::DataServicesContributor)
        } else {
            NO_REQUIREMENT.to_owned()
        };
        let holders = r
            .space
            .iter()
            .map(|&s| space_role_name(s))
            .chain(r.system.iter().map(|&s| system_role_name(s)));
        for holder in holders {
            lines.push(vec![holder, r.action.as_str().to_owned(), needs.clone()]);
        }
        lines.push(vec![
            OPERATOR_ROLE.to_owned(),
            r.action.as_str().to_owned(),
            NO_REQUIREMENT.to_owned(),
        ]);
    }
    lines
}

/// The marker in a policy line's third field meaning "no system role needed".
pub(crate) const NO_REQUIREMENT: &str = "-";
/// The casbin role name of the break-glass operator.
pub(crate) const OPERATOR_ROLE: &str = "role:builtin:operator";
/// Every role name starts with this; subjects may not.
pub(crate) const ROLE_PREFIX: &str = "role:";

pub(crate) fn space_role_name(role: SpaceRole) -> String {
    format!("{ROLE_PREFIX}space:{role}")
}

pub(crate) fn system_role_name(role: SystemRole) -> String {
    format!("{ROLE_PREFIX}system:{role}")
}

/// The role × action matrix as the markdown tables published in `docs/rbac.md` (a test keeps
/// the two identical).
pub fn matrix_markdown() -> String {
    let mark = |held: bool| if held { "✓" } else { "" };
    let mut out = String::from("### Space-scoped actions\n\n| action | what it allows |");
    for role in SpaceRole::ALL {
        out.push_str(&format!(" `{role}` |"));
    }
    out.push_str(" `data_admin` (any space) | needs `data_services_contributor` |\n|---|---|");
    out.push_str(&":-:|".repeat(SpaceRole::ALL.len() + 2));
    out.push('\n');
    for r in MATRIX.iter().filter(|r| r.scope == Scope::Space) {
        out.push_str(&format!("| `{}` | {} |", r.action, r.action.description()));
        for role in SpaceRole::ALL {
            out.push_str(&format!(" {} |", mark(r.space.contains(role))));
        }
        out.push_str(&format!(
            " {} | {} |\n",
            mark(r.system.contains(&ADMIN)),
            if r.contributor { "yes" } else { "" }
        ));
    }
    out.push_str("\n### System-wide actions\n\n| action | what it allows |");
    for role in SystemRole::ALL {
        out.push_str(&format!(" `{role}` |"));
    }
    out.push_str("\n|---|---|");
    out.push_str(&":-:|".repeat(SystemRole::ALL.len()));
    out.push('\n');
    for r in MATRIX.iter().filter(|r| r.scope == Scope::System) {
        out.push_str(&format!("| `{}` | {} |", r.action, r.action.description()));
        for role in SystemRole::ALL {
            out.push_str(&format!(" {} |", mark(r.system.contains(role))));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_rows_follow_action_order() {
        assert_eq!(MATRIX.len(), Action::ALL.len());
        for (i, (row, action)) in MATRIX.iter().zip(Action::ALL).enumerate() {
            assert_eq!(row.action, *action, "row {i}");
            assert_eq!(*action as usize, i);
        }
    }

    #[test]
    fn owner_holds_every_space_action_and_system_rows_hold_no_space_role() {
        for r in MATRIX {
            match r.scope {
                Scope::Space => assert!(r.space.contains(&OWNER), "{}", r.action),
                Scope::System => assert!(r.space.is_empty() && !r.contributor, "{}", r.action),
            }
        }
    }

    #[test]
    fn names_round_trip_through_from_str_and_serde() {
        fn check<T>(all: &[T])
        where
            T: Copy + fmt::Display + FromStr<Err = Error> + PartialEq + fmt::Debug,
            T: serde::Serialize + serde::de::DeserializeOwned,
        {
            for v in all {
                let name = v.to_string();
                assert_eq!(name.parse::<T>().ok(), Some(*v));
                let json = serde_json::to_string(v).expect("serialize");
                assert_eq!(json, format!("\"{name}\""));
                assert_eq!(serde_json::from_str::<T>(&json).expect("deserialize"), *v);
            }
        }
        for a in Action::ALL {
            let d = a.description();
            assert!(
                d.ends_with('.') && !d.contains('`') && !d.contains('|'),
                "{a}: {d}"
            );
        }
        assert!(
            SystemRole::DataAdmin
                .description()
                .contains("appoint owners")
        );
        check(SpaceRole::ALL);
        check(SystemRole::ALL);
        check(Action::ALL);
        assert_eq!(SpaceRole::ALL.len(), 6);
        assert_eq!(SystemRole::ALL.len(), 4);
        assert!(matches!(
            "Owner".parse::<SpaceRole>(),
            Err(Error::UnknownName {
                kind: "space role",
                ..
            })
        ));
    }
}
