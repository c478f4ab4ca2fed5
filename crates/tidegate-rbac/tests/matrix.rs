//! The whole matrix, written out by hand, checked cell by cell against the `Authorizer`; the
//! grant rule; and `docs/rbac.md` against `matrix_markdown()`.

use tidegate_rbac::{Action, Authorizer, Error, Scope, SpaceRole, SystemRole, matrix_markdown};

/// Space-scoped actions. Columns: owner, can_view, can_consume, can_manage, can_operate,
/// can_edit, data_admin (in any space), needs data_services_contributor. `x` allowed, `.` not.
const SPACE_MATRIX: &str = "
space_read         x x x x x x  x  .
space_update       x . . x . .  x  .
space_delete       x . . . . .  x  .
members_list       x . . x . .  x  .
members_grant      x . . x . .  x  .
members_revoke     x . . x . .  x  .
task_list          x x . x x x  .  .
task_read          x . . . . x  .  x
task_create        x . . . . x  .  x
task_update        x . . . . x  .  x
task_delete        x . . . . x  .  x
task_run           x . . . x .  .  x
task_stop          x . . . x .  .  x
task_resume        x . . . x .  .  x
run_read           x x . x x x  .  .
connection_read    x . . . . x  .  x
connection_create  x . . . . x  .  x
connection_update  x . . . . x  .  x
connection_delete  x . . . . x  .  x
connection_test    x . . . x x  .  x
gateway_read       x x . x x x  .  .
gateway_manage     x . . . . .  .  x
data_consume       x . x . . .  .  .
data_asset_create  x . . . . x  .  .
audit_read         x . . x . .  x  .
";

/// System-wide actions. Columns: data_admin, data_product_manager, data_space_creator,
/// data_services_contributor.
const SYSTEM_MATRIX: &str = "
space_create         . . x .
spaces_administer    x . . .
data_product_create  . x . .
users_manage         x . . .
assist_configure     x . . .
";

struct Cells {
    action: Action,
    marks: Vec<bool>,
}

fn parse(table: &str, columns: usize) -> Vec<Cells> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let action: Action = words.next().expect("action").parse().expect("known action");
            let marks: Vec<bool> = words
                .map(|w| match w {
                    "x" => true,
                    "." => false,
                    other => panic!("bad cell {other:?} in {line:?}"),
                })
                .collect();
            assert_eq!(marks.len(), columns, "{line}");
            Cells { action, marks }
        })
        .collect()
}

const SPACE: &str = "sp_main";
const OTHER: &str = "sp_other";

#[tokio::test]
async fn every_cell_of_the_matrix_holds() -> Result<(), Error> {
    let space_rows = parse(SPACE_MATRIX, 8);
    let system_rows = parse(SYSTEM_MATRIX, 4);
    // The tables name every action exactly once.
    let mut named: Vec<Action> = space_rows
        .iter()
        .chain(&system_rows)
        .map(|c| c.action)
        .collect();
    named.sort();
    assert_eq!(named, Action::ALL);

    let authz = Authorizer::new().await?;
    // For each space role, one subject with the role and Data Services Contributor, one with
    // the role alone.
    for role in SpaceRole::ALL {
        let with = format!("user:{role}+dsc");
        let without = format!("user:{role}");
        authz.assign_space_role(&with, *role, SPACE).await?;
        authz
            .assign_system_role(&with, SystemRole::DataServicesContributor)
            .await?;
        authz.assign_space_role(&without, *role, SPACE).await?;
    }
    for role in SystemRole::ALL {
        authz
            .assign_system_role(&format!("sys:{role}"), *role)
            .await?;
    }

    for row in &space_rows {
        let a = row.action;
        assert_eq!(a.scope(), Scope::Space, "{a}");
        let needs_dsc = row.marks[7];
        assert_eq!(a.needs_contributor(), needs_dsc, "{a}");
        for (i, role) in SpaceRole::ALL.iter().enumerate() {
            let expected = row.marks[i];
            let with = format!("user:{role}+dsc");
            let without = format!("user:{role}");
            assert_eq!(
                authz.allowed(&with, a, Some(SPACE)).await?,
                expected,
                "{role} {a}"
            );
            assert_eq!(
                authz.allowed(&without, a, Some(SPACE)).await?,
                expected && !needs_dsc,
                "{role} without contributor: {a}"
            );
            assert!(
                !authz.allowed(&with, a, Some(OTHER)).await?,
                "{role} elsewhere: {a}"
            );
            assert_eq!(
                role.actions().any(|x| x == a),
                expected,
                "{role}.actions() {a}"
            );
        }
        for role in SystemRole::ALL {
            let expected = *role == SystemRole::DataAdmin && row.marks[6];
            for space in [SPACE, OTHER] {
                let got = authz
                    .allowed(&format!("sys:{role}"), a, Some(space))
                    .await?;
                assert_eq!(got, expected, "{role} {a} in {space}");
            }
        }
        assert!(!authz.allowed("nobody", a, Some(SPACE)).await?);
        assert!(matches!(
            authz.allowed("user:owner+dsc", a, None).await,
            Err(Error::Scope { .. })
        ));
    }

    for row in &system_rows {
        let a = row.action;
        assert_eq!(a.scope(), Scope::System, "{a}");
        assert!(!a.needs_contributor());
        for (i, role) in SystemRole::ALL.iter().enumerate() {
            let got = authz.allowed(&format!("sys:{role}"), a, None).await?;
            assert_eq!(got, row.marks[i], "{role} {a}");
            assert_eq!(role.actions().any(|x| x == a), row.marks[i]);
        }
        for role in SpaceRole::ALL {
            assert!(!authz.allowed(&format!("user:{role}+dsc"), a, None).await?);
        }
        assert!(!authz.allowed("nobody", a, None).await?);
        assert!(matches!(
            authz.allowed("sys:data_admin", a, Some(SPACE)).await,
            Err(Error::Scope { .. })
        ));
    }
    Ok(())
}

#[tokio::test]
async fn unknown_invalid_and_role_named_subjects_are_denied_everything() -> Result<(), Error> {
    let authz = Authorizer::new().await?;
    authz
        .assign_space_role("user:o", SpaceRole::Owner, SPACE)
        .await?;
    for subject in [
        "nobody",
        "",
        "role:space:owner",
        "role:builtin:operator",
        "user:o\n",
    ] {
        for a in Action::ALL {
            let space = (a.scope() == Scope::Space).then_some(SPACE);
            assert!(!authz.allowed(subject, *a, space).await?, "{subject:?} {a}");
        }
        for r in SpaceRole::ALL {
            assert!(!authz.may_grant(subject, *r, SPACE).await?);
        }
        for r in SystemRole::ALL {
            assert!(!authz.may_grant_system(subject, *r).await?);
        }
    }
    assert!(matches!(
        authz
            .assign_space_role("role:space:owner", SpaceRole::Owner, SPACE)
            .await,
        Err(Error::InvalidSubject(_))
    ));
    for bad in ["", "@system", "a b", "x,y", &"s".repeat(300)] {
        assert!(matches!(
            authz.allowed("user:o", Action::SpaceRead, Some(bad)).await,
            Err(Error::InvalidSpace(_))
        ));
    }
    Ok(())
}

#[tokio::test]
async fn operator_is_outside_the_matrix_and_allowed_everything() -> Result<(), Error> {
    let authz = Authorizer::new().await?;
    authz.add_operator("operator:0").await?;
    for a in Action::ALL {
        let space = (a.scope() == Scope::Space).then_some(SPACE);
        assert!(authz.allowed("operator:0", *a, space).await?, "{a}");
    }
    for r in SpaceRole::ALL {
        assert!(authz.may_grant("operator:0", *r, OTHER).await?);
    }
    for r in SystemRole::ALL {
        assert!(authz.may_grant_system("operator:0", *r).await?);
    }
    assert!(authz.system_roles_of("operator:0").await?.is_empty());
    Ok(())
}

/// `(granter's space roles, role granted, expected)` in `SPACE`; the granter also holds Data
/// Services Contributor, which must not matter.
const GRANTS: &[(&[SpaceRole], SpaceRole, bool)] = {
    use SpaceRole::*;
    &[
        (&[CanEdit], Owner, false),
        (&[CanEdit], CanEdit, false),
        (&[CanManage], CanEdit, false),
        (&[CanManage], CanView, true),
        (&[CanManage], CanOperate, false),
        (&[CanManage], CanManage, true),
        (&[CanManage, CanEdit], CanEdit, true),
        (&[CanManage, CanEdit], CanOperate, false),
        (&[CanManage, CanEdit], Owner, false),
        (&[CanManage, CanView, CanOperate], CanView, true),
        (&[CanView], CanView, false),
        (&[CanOperate], CanOperate, false),
        (&[CanConsume], CanConsume, false),
    ]
};

#[tokio::test]
async fn no_role_grants_more_than_it_has() -> Result<(), Error> {
    let authz = Authorizer::new().await?;
    for (i, (held, role, expected)) in GRANTS.iter().enumerate() {
        let granter = format!("granter:{i}");
        for r in *held {
            authz.assign_space_role(&granter, *r, SPACE).await?;
        }
        authz
            .assign_system_role(&granter, SystemRole::DataServicesContributor)
            .await?;
        assert_eq!(
            authz.may_grant(&granter, *role, SPACE).await?,
            *expected,
            "{held:?} grants {role}"
        );
        assert_eq!(
            authz.may_revoke(&granter, *role, SPACE).await?,
            *expected,
            "{held:?} revokes {role}"
        );
        assert!(!authz.may_grant(&granter, *role, OTHER).await?);
    }

    // An owner grants anything in its own space, nothing in another, with or without DSC.
    authz
        .assign_space_role("owner", SpaceRole::Owner, SPACE)
        .await?;
    for r in SpaceRole::ALL {
        assert!(
            authz.may_grant("owner", *r, SPACE).await?,
            "owner grants {r}"
        );
        assert!(authz.may_revoke("owner", *r, SPACE).await?);
        assert!(!authz.may_grant("owner", *r, OTHER).await?);
    }
    // A Data Admin appoints any role, owners included, in any space, yet touches no task.
    authz
        .assign_system_role("admin", SystemRole::DataAdmin)
        .await?;
    for r in SpaceRole::ALL {
        assert!(authz.may_grant("admin", *r, OTHER).await?);
    }
    assert!(
        !authz
            .allowed("admin", Action::TaskList, Some(OTHER))
            .await?
    );
    // Other system roles grant no space role.
    for s in [
        SystemRole::DataProductManager,
        SystemRole::DataSpaceCreator,
        SystemRole::DataServicesContributor,
    ] {
        let who = format!("sys:{s}");
        authz.assign_system_role(&who, s).await?;
        for r in SpaceRole::ALL {
            assert!(!authz.may_grant(&who, *r, SPACE).await?);
        }
    }
    // After a revoke, the roles are gone and so is the right to grant.
    assert!(
        authz
            .revoke_space_role("owner", SpaceRole::Owner, SPACE)
            .await?
    );
    assert!(
        !authz
            .revoke_space_role("owner", SpaceRole::Owner, SPACE)
            .await?
    );
    assert!(authz.roles_of("owner", SPACE).await?.is_empty());
    assert!(!authz.may_grant("owner", SpaceRole::CanView, SPACE).await?);
    Ok(())
}

#[tokio::test]
async fn system_roles_are_granted_by_a_data_admin_holding_them_or_an_operator() -> Result<(), Error>
{
    let authz = Authorizer::new().await?;
    authz
        .assign_system_role("admin", SystemRole::DataAdmin)
        .await?;
    authz
        .assign_system_role("creator", SystemRole::DataSpaceCreator)
        .await?;
    assert!(
        authz
            .may_grant_system("admin", SystemRole::DataAdmin)
            .await?
    );
    assert!(
        !authz
            .may_grant_system("admin", SystemRole::DataSpaceCreator)
            .await?
    );
    assert!(
        !authz
            .may_grant_system("creator", SystemRole::DataSpaceCreator)
            .await?
    );
    authz
        .assign_system_role("admin", SystemRole::DataSpaceCreator)
        .await?;
    assert!(
        authz
            .may_grant_system("admin", SystemRole::DataSpaceCreator)
            .await?
    );
    assert_eq!(
        authz.system_roles_of("admin").await?,
        [SystemRole::DataAdmin, SystemRole::DataSpaceCreator]
    );
    assert!(
        authz
            .revoke_system_role("admin", SystemRole::DataAdmin)
            .await?
    );
    assert!(
        !authz
            .may_grant_system("admin", SystemRole::DataSpaceCreator)
            .await?
    );
    Ok(())
}

#[tokio::test]
async fn roles_are_per_space() -> Result<(), Error> {
    let authz = Authorizer::new().await?;
    authz
        .assign_space_role("u", SpaceRole::CanEdit, SPACE)
        .await?;
    authz
        .assign_space_role("u", SpaceRole::CanView, SPACE)
        .await?;
    authz
        .assign_space_role("u", SpaceRole::CanConsume, OTHER)
        .await?;
    assert_eq!(
        authz.roles_of("u", SPACE).await?,
        [SpaceRole::CanView, SpaceRole::CanEdit]
    );
    assert_eq!(authz.roles_of("u", OTHER).await?, [SpaceRole::CanConsume]);
    assert!(authz.roles_of("nobody", SPACE).await?.is_empty());
    Ok(())
}

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/rbac.md");
const BEGIN: &str = "<!-- matrix:begin (generated by tidegate_rbac::matrix_markdown) -->\n";
const END: &str = "<!-- matrix:end -->";

/// `docs/rbac.md` publishes exactly `matrix_markdown()`. `UPDATE_DOCS=1` rewrites it.
#[test]
fn docs_publish_the_matrix_of_the_code() {
    let doc = std::fs::read_to_string(DOC).expect("docs/rbac.md");
    let start = doc.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = doc.find(END).expect("end marker");
    let generated = matrix_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{generated}{}", &doc[..start], &doc[end..]);
        std::fs::write(DOC, updated).expect("write docs/rbac.md");
        return;
    }
    assert!(
        doc[start..end] == generated,
        "docs/rbac.md differs from matrix_markdown(); run `UPDATE_DOCS=1 cargo nextest run -p \
         tidegate-rbac` and review the diff. Generated:\n{generated}"
    );
}
