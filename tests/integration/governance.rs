//! The governed control plane over HTTPS, through `tidegate_client::Client`: logins and
//! sessions, data spaces and their members, the role × action matrix as the API enforces it,
//! the audit log, secrets at rest, and bad input.

use crate::common;

use common::{ADMIN, ADMIN_PASSWORD, Harness};
use serde_json::{Value, json};
use tidegate::client::Client;
use tidegate::control_plane::OidcConfig;
use tidegate::identity::Zeroizing;
use tidegate::metadata::{MetadataStore, NewLoginSession, TokenDigest};
use tidegate::rbac::{Action, SpaceRole, SystemRole};
use tidegate_testkit::{OidcProvider, PgServer};

const PASSWORD: &str = "a long enough password";

/// The HTTP status of a call: 2xx as 200, refusals as their status.
async fn status(result: impl Future<Output = Result<Value, tidegate::client::Error>>) -> u16 {
    match result.await {
        Ok(_) => 200,
        Err(e) => e.status().unwrap_or_else(|| panic!("transport error: {e}")),
    }
}

/// Creates a local user (as `admin`) and returns its id.
async fn user(admin: &Client, username: &str) -> String {
    let created = admin
        .post(
            "/api/v1/users",
            &json!({"username": username, "password": PASSWORD}),
        )
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_owned()
}

async fn grant(admin: &Client, space: &str, user: &str, role: &str) -> Value {
    admin
        .put(
            &format!("/api/v1/spaces/{space}/members/{user}/roles/{role}"),
            &json!({}),
        )
        .await
        .unwrap()
}

async fn new_space(admin: &Client, name: &str) -> String {
    let space = admin
        .post("/api/v1/spaces", &json!({"name": name}))
        .await
        .unwrap();
    space["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_logout_expiry_and_when_the_user_is_disabled() {
    let h = Harness::start().await;
    let admin = h.login(ADMIN, ADMIN_PASSWORD).await;
    let me = admin.get("/api/v1/auth/me").await.unwrap();
    assert_eq!(me["username"], json!(ADMIN));
    assert_eq!(me["system_roles"].as_array().unwrap().len(), 4, "{me}");

    let bob = user(&admin, "bob").await;
    // Wrong password and unknown user: the same 401, saying nothing about which.
    for (name, password) in [("bob", "not bob's password"), ("nobody", PASSWORD)] {
        let error = h
            .client()
            .post(
                "/api/v1/auth/login",
                &json!({"username": name, "password": password}),
            )
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(401), "{error}");
        assert!(error.to_string().contains("invalid username or password"));
    }
    let login = h
        .client()
        .post(
            "/api/v1/auth/login",
            &json!({"username": "bob", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(login["user"]["id"], json!(bob));
    assert!(login["expires_at_ms"].as_i64().unwrap() > 0);
    let token = login["token"].as_str().unwrap();
    assert!(token.starts_with("tgs_"));
    let session = h.client().with_token(token);
    assert_eq!(
        session.get("/api/v1/auth/me").await.unwrap()["id"],
        json!(bob)
    );

    // Logout revokes the presenting session at once.
    session
        .post("/api/v1/auth/logout", &json!({}))
        .await
        .unwrap();
    assert_eq!(status(session.get("/api/v1/auth/me")).await, 401);

    // An expired session, and tokens that are no session at all.
    let expired = format!("tgs_{}", "A".repeat(43));
    h.cp.store()
        .create_session(&NewLoginSession {
            user_id: bob.clone(),
            token: TokenDigest::of(&expired),
            expires_at_ms: 1,
        })
        .await
        .unwrap();
    for token in [expired.as_str(), "tgs_short", "tgs_' OR 1=1 --"] {
        let client = h.client().with_token(token);
        assert_eq!(status(client.get("/api/v1/auth/me")).await, 401, "{token}");
    }

    // Disabling a user ends its sessions and its logins.
    let bob_session = h.login("bob", PASSWORD).await;
    bob_session.get("/api/v1/auth/me").await.unwrap();
    admin
        .patch(&format!("/api/v1/users/{bob}"), &json!({"disabled": true}))
        .await
        .unwrap();
    assert_eq!(status(bob_session.get("/api/v1/auth/me")).await, 401);
    assert_eq!(
        status(h.client().post(
            "/api/v1/auth/login",
            &json!({"username": "bob", "password": PASSWORD}),
        ))
        .await,
        401
    );
    // Enabled again, it logs in, but the old session stays revoked.
    admin
        .patch(&format!("/api/v1/users/{bob}"), &json!({"disabled": false}))
        .await
        .unwrap();
    assert_eq!(status(bob_session.get("/api/v1/auth/me")).await, 401);
    h.login("bob", PASSWORD).await;

    // Only user managers manage users; a weak password is refused with the policy's reason.
    let plain = h.login("bob", PASSWORD).await;
    assert_eq!(
        status(plain.post(
            "/api/v1/users",
            &json!({"username": "eve", "password": PASSWORD}),
        ))
        .await,
        403
    );
    let error = admin
        .post(
            "/api/v1/users",
            &json!({"username": "eve", "password": "short"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    assert!(error.to_string().contains("12 characters"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_denied_at_its_next_request() {
    let h = Harness::start().await;
    let admin = h.login(ADMIN, ADMIN_PASSWORD).await;
    let space = new_space(&admin, "finance").await;
    let carol = user(&admin, "carol").await;
    grant(&admin, &space, &carol, "can_view").await;
    let session = h.login("carol", PASSWORD).await;
    let path = format!("/api/v1/spaces/{space}");
    session.get(&path).await.unwrap();
    let me = session.get("/api/v1/auth/me").await.unwrap();
    assert_eq!(
        me["spaces"],
        json!([{"space_id": space, "roles": ["can_view"]}])
    );
    admin
        .delete(&format!(
            "/api/v1/spaces/{space}/members/{carol}/roles/can_view"
        ))
        .await
        .unwrap();
    let error = session.get(&path).await.unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.to_string().contains("space_read"), "{error}");
    // Its spaces list is empty now.
    let spaces = session.get("/api/v1/spaces").await.unwrap();
    assert_eq!(spaces["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_grants_more_than_it_holds() {
    let h = Harness::start().await;
    let admin = h.login(ADMIN, ADMIN_PASSWORD).await;
    let space = new_space(&admin, "sales").await;
    let ed = user(&admin, "ed").await;
    let mia = user(&admin, "mia").await;
    grant(&admin, &space, &ed, "can_edit").await;
    grant(&admin, &space, &mia, "can_manage").await;
    let members = format!("/api/v1/spaces/{space}/members");
    let before = admin.get(&members).await.unwrap();

    // An editor granting itself ownership: 403, nothing changes.
    let ed_session = h.login("ed", PASSWORD).await;
    let error = ed_session
        .put(&format!("{members}/{ed}/roles/owner"), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    assert_eq!(admin.get(&members).await.unwrap(), before);

    // A manager grants viewers but not editors, and not ownership.
    let mia_session = h.login("mia", PASSWORD).await;
    let error = mia_session
        .put(&format!("{members}/{ed}/roles/owner"), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.to_string().contains("owner"), "{error}");
    let granted = mia_session
        .put(&format!("{members}/{ed}/roles/can_view"), &json!({}))
        .await
        .unwrap();
    assert_eq!(granted["roles"], json!(["can_view", "can_edit"]));
    assert_eq!(
        status(mia_session.put(&format!("{members}/{mia}/roles/can_operate"), &json!({}))).await,
        403
    );

    // The members list shows users with their roles; whoever creates a space owns it.
    let listed = admin.get(&members).await.unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{listed}");
    for item in items {
        let expected = if item["user_id"] == json!(ed) {
            json!(["can_view", "can_edit"])
        } else if item["user_id"] == json!(mia) {
            json!(["can_manage"])
        } else {
            assert_eq!(item["username"], json!(ADMIN));
            json!(["owner"])
        };
        assert_eq!(item["roles"], expected, "{listed}");
        assert!(item["username"].is_string());
    }
    // System roles: only a Data Admin holding the role hands it on.
    let error = mia_session
        .put(
            &format!("/api/v1/users/{mia}/system-roles/data_admin"),
            &json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    let granted = admin
        .put(
            &format!("/api/v1/users/{mia}/system-roles/data_space_creator"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(granted["system_roles"], json!(["data_space_creator"]));
    // …and a Data Space Creator who creates a space owns it.
    let own = mia_session
        .post("/api/v1/spaces", &json!({"name": "mia's"}))
        .await
        .unwrap();
    let own = own["id"].as_str().unwrap();
    mia_session
        .get(&format!("/api/v1/spaces/{own}/members"))
        .await
        .unwrap();
}

/// The objects the probes act on, in one data space.
struct Fixture {
    admin: Client,
    operator: Client,
    space: String,
    task: String,
    run: String,
    connection: String,
    gateway: String,
    bystander: String,
}

impl Fixture {
    async fn create(&self, path: &str, body: Value) -> String {
        let created = self.operator.post(path, &body).await.unwrap();
        created["id"].as_str().unwrap().to_owned()
    }

    async fn new_connection(&self, n: usize) -> String {
        let body = json!({"space_id": self.space, "name": format!("c{n}"), "kind": "sqlite",
                          "settings": {"path": "/tmp/db.sqlite"}});
        self.create("/api/v1/connections", body).await
    }
}

/// The subject of a probe: its id, and the space role it holds in the fixture's space.
struct Subject<'a> {
    client: &'a Client,
    id: &'a str,
    space_role: Option<SpaceRole>,
}

/// Makes the one request of the API that asks for `action`, as `who`; its HTTP status.
async fn probe(who: &Subject<'_>, f: &Fixture, action: Action, n: usize) -> u16 {
    let c = who.client;
    let s = &f.space;
    let name = format!("probe {n}");
    match action {
        Action::SpaceRead => status(c.get(&format!("/api/v1/spaces/{s}"))).await,
        Action::SpaceUpdate => {
            let body = json!({"description": name});
            status(c.patch(&format!("/api/v1/spaces/{s}"), &body)).await
        }
        Action::SpaceDelete => {
            // A space of its own, where the subject holds the same role.
            let space = new_space(&f.admin, &name).await;
            if let Some(role) = who.space_role {
                grant(&f.admin, &space, who.id, role.as_str()).await;
            }
            status(c.delete(&format!("/api/v1/spaces/{space}"))).await
        }
        Action::MembersList => status(c.get(&format!("/api/v1/spaces/{s}/members"))).await,
        Action::MembersGrant => {
            let path = format!("/api/v1/spaces/{s}/members/{}/roles/can_view", f.bystander);
            status(c.put(&path, &json!({}))).await
        }
        Action::MembersRevoke => {
            grant(&f.admin, s, &f.bystander, "can_view").await;
            let path = format!("/api/v1/spaces/{s}/members/{}/roles/can_view", f.bystander);
            status(c.delete(&path)).await
        }
        Action::TaskList => status(c.get(&format!("/api/v1/tasks?space_id={s}"))).await,
        Action::TaskRead => status(c.get(&format!("/api/v1/tasks/{}", f.task))).await,
        Action::TaskCreate => {
            let body = json!({"space_id": s, "name": name, "gateway_id": f.gateway,
                              "source_id": f.connection, "target_id": f.connection});
            status(c.post("/api/v1/tasks", &body)).await
        }
        Action::TaskUpdate => {
            let body = json!({"schedule": null});
            status(c.patch(&format!("/api/v1/tasks/{}", f.task), &body)).await
        }
        Action::TaskDelete => {
            let body = json!({"space_id": s, "name": name, "gateway_id": f.gateway,
                              "source_id": f.connection, "target_id": f.connection});
            let task = f.create("/api/v1/tasks", body).await;
            status(c.delete(&format!("/api/v1/tasks/{task}"))).await
        }
        Action::TaskRun => {
            status(c.post(&format!("/api/v1/tasks/{}/runs", f.task), &json!({}))).await
        }
        Action::TaskStop => {
            status(c.post(&format!("/api/v1/tasks/{}/stop", f.task), &json!({}))).await
        }
        Action::TaskResume => {
            status(c.post(&format!("/api/v1/runs/{}/resume", f.run), &json!({}))).await
        }
        Action::RunRead => status(c.get(&format!("/api/v1/tasks/{}/runs", f.task))).await,
        Action::ConnectionRead => {
            status(c.get(&format!("/api/v1/connections/{}", f.connection))).await
        }
        Action::ConnectionCreate => {
            let body = json!({"space_id": s, "name": name, "kind": "sqlite",
                              "settings": {"path": "/tmp/x.db"}});
            status(c.post("/api/v1/connections", &body)).await
        }
        Action::ConnectionUpdate => {
            let path = format!("/api/v1/connections/{}", f.connection);
            let body = json!({"settings": {"path": "/tmp/db.sqlite"}});
            status(c.patch(&path, &body)).await
        }
        Action::ConnectionDelete => {
            let connection = f.new_connection(n).await;
            status(c.delete(&format!("/api/v1/connections/{connection}"))).await
        }
        Action::ConnectionTest => {
            let path = format!("/api/v1/connections/{}/test", f.connection);
            status(c.post(&path, &json!({"gateway_id": f.gateway}))).await
        }
        Action::GatewayRead => status(c.get(&format!("/api/v1/gateways?space_id={s}"))).await,
        Action::GatewayManage => {
            status(c.post("/api/v1/gateways", &json!({"space_id": s, "name": name}))).await
        }
        Action::DataConsume => status(c.get(&format!("/api/v1/tasks/{}/output", f.task))).await,
        Action::AuditRead => status(c.get(&format!("/api/v1/audit?space_id={s}"))).await,
        Action::SpaceCreate => status(c.post("/api/v1/spaces", &json!({"name": name}))).await,
        Action::SpacesAdminister => status(c.get("/api/v1/audit")).await,
        Action::UsersManage => status(c.get("/api/v1/users")).await,
        Action::DataAssetCreate => {
            // Descriptions for the space's data assets (refused with 409 while the assist is
            // off, which is after authorization).
            let path = format!("/api/v1/connections/{}/describe", f.connection);
            status(c.post(&path, &json!({"gateway_id": f.gateway}))).await
        }
        Action::AssistConfigure => status(c.get("/api/v1/settings/assist")).await,
        Action::DataProductCreate => {
            // An empty bundle: refused (400) once authorization let the request through.
            let body = json!({"name": name, "task_ids": []});
            status(c.post("/api/v1/data-products", &body)).await
        }
    }
}

/// Whether `docs/rbac.md` (generated from `tidegate_rbac`'s matrix) lets a subject holding
/// `space_role` in the fixture's space, `system_role`, and Data Services Contributor do
/// `action` there.
fn expected(
    space_role: Option<SpaceRole>,
    system_role: Option<SystemRole>,
    action: Action,
) -> bool {
    space_role.is_some_and(|r| r.actions().any(|a| a == action))
        || system_role.is_some_and(|r| r.actions().any(|a| a == action))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_enforces_the_role_matrix() {
    let h = Harness::start().await;
    let admin = h.login(ADMIN, ADMIN_PASSWORD).await;
    let space = new_space(&admin, "matrix").await;
    let operator = h.operator();
    let connection = operator
        .post(
            "/api/v1/connections",
            &json!({"space_id": space, "name": "db", "kind": "sqlite",
                    "settings": {"path": "/tmp/db.sqlite"}, "secrets": {"password": "pw"}}),
        )
        .await
        .unwrap();
    let connection = connection["id"].as_str().unwrap().to_owned();
    let gateway = operator
        .post(
            "/api/v1/gateways",
            &json!({"space_id": space, "name": "gw"}),
        )
        .await
        .unwrap();
    let gateway = gateway["id"].as_str().unwrap().to_owned();
    let task = operator
        .post(
            "/api/v1/tasks",
            &json!({"space_id": space, "name": "t", "gateway_id": gateway,
                    "source_id": connection, "target_id": connection}),
        )
        .await
        .unwrap();
    let task = task["id"].as_str().unwrap().to_owned();
    // The gateway is offline: the run is recorded, and fails at once (a run to resume).
    let started = operator
        .post(&format!("/api/v1/tasks/{task}/runs"), &json!({}))
        .await
        .unwrap_err();
    assert_eq!(started.status(), Some(409), "{started}");
    let runs = operator
        .get(&format!("/api/v1/tasks/{task}/runs"))
        .await
        .unwrap();
    let fixture = Fixture {
        run: runs["items"][0]["id"].as_str().unwrap().to_owned(),
        bystander: user(&admin, "bystander").await,
        admin: admin.clone(),
        operator,
        space: space.clone(),
        task,
        connection,
        gateway,
    };

    // Every space role alone, every system role but the contributor one alone, and nothing;
    // each with Data Services Contributor, which integration actions need on top.
    let mut subjects: Vec<(Option<SpaceRole>, Option<SystemRole>)> =
        SpaceRole::ALL.iter().map(|r| (Some(*r), None)).collect();
    subjects.extend(
        SystemRole::ALL
            .iter()
            .filter(|r| **r != SystemRole::DataServicesContributor)
            .map(|r| (None, Some(*r))),
    );
    subjects.push((None, None));
    let mut n = 0;
    let mut failures = Vec::new();
    for (space_role, system_role) in subjects {
        let name = format!(
            "member-{}-{}",
            space_role.map_or("none", SpaceRole::as_str),
            system_role.map_or("none", SystemRole::as_str)
        );
        let id = user(&admin, &name).await;
        let mut system_roles = vec!["data_services_contributor"];
        system_roles.extend(system_role.map(SystemRole::as_str));
        for role in system_roles {
            admin
                .put(
                    &format!("/api/v1/users/{id}/system-roles/{role}"),
                    &json!({}),
                )
                .await
                .unwrap();
        }
        if let Some(role) = space_role {
            grant(&admin, &space, &id, role.as_str()).await;
        }
        let client = h.login(&name, PASSWORD).await;
        let who = Subject {
            client: &client,
            id: &id,
            space_role,
        };
        for action in Action::ALL {
            n += 1;
            let allowed = expected(space_role, system_role, *action);
            let got = probe(&who, &fixture, *action, n).await;
            // Allowed requests may still fail for their own reasons (the gateway is offline):
            // anything but 401 and 403 means authorization let them through.
            let ok = if allowed {
                got != 401 && got != 403
            } else {
                got == 403
            };
            if !ok {
                failures.push(format!(
                    "{space_role:?} {system_role:?} {action:?}: HTTP {got}, allowed: {allowed}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Integration actions also need Data Services Contributor: an editor without it reads no
    // task in full, though it still lists them.
    let id = user(&admin, "editor-without-contributor").await;
    grant(&admin, &space, &id, "can_edit").await;
    let client = h.login("editor-without-contributor", PASSWORD).await;
    let editor = Subject {
        client: &client,
        id: &id,
        space_role: Some(SpaceRole::CanEdit),
    };
    assert_eq!(probe(&editor, &fixture, Action::TaskRead, 0).await, 403);
    assert_eq!(probe(&editor, &fixture, Action::TaskList, 0).await, 200);
    // A member of one space holds nothing in another.
    let other = new_space(&admin, "elsewhere").await;
    let elsewhere = Fixture {
        space: other,
        ..fixture
    };
    assert_eq!(probe(&editor, &elsewhere, Action::SpaceRead, 0).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_are_audited_and_exported() {
    let h = Harness::start().await;
    let admin = h.login(ADMIN, ADMIN_PASSWORD).await;
    let admin_id = admin.get("/api/v1/auth/me").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        status(h.client().post(
            "/api/v1/auth/login",
            &json!({"username": ADMIN, "password": "wrong password here"}),
        ))
        .await,
        401
    );
    let space = new_space(&admin, "audited").await;
    let owner = user(&admin, "olga").await;
    grant(&admin, &space, &owner, "owner").await;
    let olga = h.login("olga", PASSWORD).await;
    let nobody = h.login(ADMIN, ADMIN_PASSWORD).await;
    nobody
        .post("/api/v1/auth/logout", &json!({}))
        .await
        .unwrap();
    // A refused request is recorded too, as denied, with the actor that tried.
    assert_eq!(
        status(olga.post("/api/v1/spaces", &json!({"name": "not olga's"}))).await,
        403
    );

    let events = admin.get("/api/v1/audit?limit=1000").await.unwrap();
    let events = events["items"].as_array().unwrap().clone();
    let find = |action: &str, outcome: &str| {
        events
            .iter()
            .find(|e| e["action"] == json!(action) && e["outcome"] == json!(outcome))
            .unwrap_or_else(|| panic!("no {outcome} {action} in {events:#?}"))
            .clone()
    };
    let failed = find("session.login", "denied");
    assert_eq!(failed["actor"], json!(admin_id));
    assert_eq!(failed["detail"]["username"], json!(ADMIN));
    assert_eq!(failed["source_addr"], json!("127.0.0.1"));
    let created = find("space.create", "success");
    assert_eq!(created["actor"], json!(admin_id));
    assert_eq!(created["target_id"], json!(space));
    let granted = find("member.grant", "success");
    assert_eq!(granted["space_id"], json!(space));
    assert_eq!(granted["target_id"], json!(owner));
    assert_eq!(granted["detail"]["role"], json!("owner"));
    find("session.logout", "success");
    find("user.create", "success");
    let refused = find("space.create", "denied");
    assert_eq!(refused["actor"], json!(owner));
    assert!(
        refused["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("space_create")
    );
    assert!(events.iter().all(|e| !e.to_string().contains(PASSWORD)));
    assert!(
        events
            .iter()
            .all(|e| !e.to_string().contains(ADMIN_PASSWORD))
    );

    // The owner reads its space's log, not the whole tenant's.
    let own = olga
        .get(&format!("/api/v1/audit?space_id={space}"))
        .await
        .unwrap();
    assert!(!own["items"].as_array().unwrap().is_empty());
    assert!(
        own["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["space_id"] == json!(space))
    );
    assert_eq!(status(olga.get("/api/v1/audit")).await, 403);
    // Filters and pages.
    let by_actor = admin
        .get(&format!("/api/v1/audit?actor={owner}&limit=1"))
        .await
        .unwrap();
    assert_eq!(by_actor["items"].as_array().unwrap().len(), 1);
    assert!(by_actor["next"].is_string(), "{by_actor}");
    let second = admin
        .get(&format!(
            "/api/v1/audit?actor={owner}&limit=1&after={}",
            by_actor["next"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_ne!(second["items"][0]["id"], by_actor["items"][0]["id"]);

    // The export: JSON Lines of every event, oldest first.
    let text = admin.get_text("/api/v1/audit/export").await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() >= events.len(),
        "{} < {}",
        lines.len(),
        events.len()
    );
    assert!(lines.iter().any(|e| e["action"] == json!("member.grant")));
    assert!(!text.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_never_shown() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let dir = state_dir.clone();
    let h = Harness::start_with(move |c| c.state_dir = Some(dir)).await;
    let admin = h.operator();
    let canary = "canary-password-7f3a9c1e5b";
    let created = admin
        .post(
            "/api/v1/connections",
            &json!({"name": "warehouse", "kind": "postgres",
                    "settings": {"host": "db.internal", "database": "sales", "user": "etl"},
                    "secrets": {"password": canary, "api_key": canary}}),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["secret_names"], json!(["api_key", "password"]));
    let shown = admin
        .get(&format!("/api/v1/connections/{id}"))
        .await
        .unwrap();
    let listed = admin.get("/api/v1/connections").await.unwrap();
    let audit = admin.get_text("/api/v1/audit/export").await.unwrap();
    assert_eq!(
        shown["settings"],
        json!({"host": "db.internal", "database": "sales", "user": "etl"})
    );
    for text in [
        created.to_string(),
        shown.to_string(),
        listed.to_string(),
        audit,
    ] {
        assert!(!text.contains(canary), "a secret left the API: {text}");
    }

    // The row holds a sealed blob, and no file of the state directory holds the secret.
    let row: (Vec<u8>, String) = tidegate::metadata::sqlx::query_as(
        "SELECT sealed_credentials, settings FROM connections WHERE id = $1",
    )
    .bind(id.clone())
    .fetch_one(h.cp.store().pool())
    .await
    .unwrap();
    assert!(row.0.starts_with(b"tgs"), "not a sealed blob");
    assert!(!row.1.contains(canary));
    let scan = |dir: &std::path::Path| {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{} holds the secret in plaintext",
                path.display()
            );
        }
    };
    scan(&state_dir);
    use std::os::unix::fs::PermissionsExt;
    for file in ["keys", "metadata.db"] {
        let mode = std::fs::metadata(state_dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // A restart finds everything again: the tenant, its data key, the connection.
    let port = h.cp.local_addr().port();
    let Harness { cp, .. } = h;
    cp.shutdown().await;
    scan(&state_dir);
    let dir = state_dir.clone();
    let h = Harness::start_with(move |c| {
        c.state_dir = Some(dir);
        c.listen = ([127, 0, 0, 1], port).into();
    })
    .await;
    let again = h
        .operator()
        .get(&format!("/api/v1/connections/{id}"))
        .await
        .unwrap();
    assert_eq!(again["secret_names"], json!(["api_key", "password"]));
    let spaces = h.operator().get("/api/v1/spaces").await.unwrap();
    assert_eq!(spaces["items"].as_array().unwrap().len(), 1, "{spaces}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_consistent_4xx_and_names_round_trip() {
    let h = Harness::start().await;
    let c = h.operator();
    let spaces_before = c.get("/api/v1/spaces").await.unwrap();
    let too_big = "x".repeat(100_000);
    // (what, method, path, body, expected status)
    let cases: Vec<(&str, &str, &str, Value, u16)> = vec![
        (
            "unknown field",
            "POST",
            "/api/v1/spaces",
            json!({"name": "a", "owner": "me"}),
            400,
        ),
        (
            "missing field",
            "POST",
            "/api/v1/spaces",
            json!({"description": "a"}),
            400,
        ),
        (
            "wrong type",
            "POST",
            "/api/v1/users",
            json!({"username": 7, "password": PASSWORD}),
            400,
        ),
        (
            "oversized body",
            "POST",
            "/api/v1/spaces",
            json!({"name": too_big}),
            413,
        ),
        (
            "empty name",
            "POST",
            "/api/v1/spaces",
            json!({"name": ""}),
            400,
        ),
        (
            "unknown role",
            "PUT",
            "/api/v1/users/x/system-roles/root",
            json!({}),
            400,
        ),
        (
            "unknown query field",
            "GET",
            "/api/v1/connections?sort=name",
            Value::Null,
            400,
        ),
        (
            "bad limit",
            "GET",
            "/api/v1/connections?limit=0",
            Value::Null,
            400,
        ),
        (
            "huge limit",
            "GET",
            "/api/v1/tasks?limit=100000",
            Value::Null,
            400,
        ),
        (
            "bad cursor",
            "GET",
            "/api/v1/gateways?after=%27%3B--",
            Value::Null,
            400,
        ),
        (
            "unknown space",
            "GET",
            "/api/v1/tasks?space_id=sp_nope",
            Value::Null,
            404,
        ),
        (
            "unknown user",
            "PATCH",
            "/api/v1/users/usr_nope",
            json!({"disabled": true}),
            404,
        ),
        (
            "wrong method",
            "DELETE",
            "/api/v1/connections",
            Value::Null,
            405,
        ),
        (
            "path traversal in a storage prefix",
            "POST",
            "/api/v1/connections",
            json!({"name": "landing", "kind": "s3",
                   "settings": {"bucket": "shared", "prefix": "tenant-a/../tenant-b"}}),
            400,
        ),
        (
            "backslash in a storage prefix",
            "POST",
            "/api/v1/connections",
            json!({"name": "landing", "kind": "local",
                   "settings": {"root": "/srv/landing", "prefix": "..\\etc"}}),
            400,
        ),
        (
            "unknown connection kind",
            "POST",
            "/api/v1/connections",
            json!({"name": "x", "kind": "oracle'; DROP TABLE connections; --"}),
            400,
        ),
        (
            "a task naming a connection that does not exist",
            "POST",
            "/api/v1/tasks",
            json!({"name": "t", "gateway_id": "gw_nope", "source_id": "conn_nope",
                   "target_id": "conn_nope"}),
            404,
        ),
    ];
    for (what, method, path, body, want) in cases {
        let result = match method {
            "POST" => c.post(path, &body).await,
            "PUT" => c.put(path, &body).await,
            "PATCH" => c.patch(path, &body).await,
            "DELETE" => c.delete(path).await,
            _ => c.get(path).await,
        };
        match result {
            Err(tidegate::client::Error::Api {
                status,
                code,
                message,
                ..
            }) => {
                assert_eq!(status, want, "{what}: {code}: {message}");
                assert!(
                    !code.is_empty() && !message.is_empty(),
                    "{what}: no error shape"
                );
            }
            other => panic!("{what}: expected HTTP {want}, got {other:?}"),
        }
    }

    // Nothing was changed by any of them.
    assert_eq!(c.get("/api/v1/spaces").await.unwrap(), spaces_before);
    for list in ["/api/v1/connections", "/api/v1/tasks", "/api/v1/users"] {
        let page = c.get(list).await.unwrap();
        let expected = usize::from(list.ends_with("users")); // the bootstrap administrator
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            expected,
            "{list}: {page}"
        );
    }

    // Not JSON at all, through a raw request: the same shape.
    let response = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(h.ca.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
        .post(format!(
            "https://localhost:{}/api/v1/spaces",
            h.cp.local_addr().port()
        ))
        .bearer_auth(common::OPERATOR)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string());

    // Names with quotes, unicode and SQL fragments are data, byte for byte.
    for name in [
        r#"O'Brien "data"; DROP TABLE users; --"#,
        "日本語 ✓ émoji 🦀",
        "' OR '1'='1",
        "back\\slash %_ wildcards",
    ] {
        let space = c
            .post("/api/v1/spaces", &json!({"name": name}))
            .await
            .unwrap();
        assert_eq!(space["name"], json!(name));
        let id = space["id"].as_str().unwrap();
        let shown = c.get(&format!("/api/v1/spaces/{id}")).await.unwrap();
        assert_eq!(shown["name"], json!(name));
        let connection = c
            .post(
                "/api/v1/connections",
                &json!({"space_id": id, "name": name, "kind": "sqlite",
                        "settings": {"path": name}}),
            )
            .await
            .unwrap();
        assert_eq!(connection["name"], json!(name));
        assert_eq!(connection["settings"]["path"], json!(name));
        let created = c
            .post(
                "/api/v1/users",
                &json!({"username": name, "password": PASSWORD, "display_name": name}),
            )
            .await
            .unwrap();
        assert_eq!(created["username"], json!(name));
        h.login(name, PASSWORD).await;
    }
    // Reserved settings are refused rather than silently taken.
    let error = c
        .post(
            "/api/v1/connections",
            &json!({"name": "r", "kind": "sqlite",
                    "settings": {"path": "p", "tidegate:secret_names": "[]"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
}

/// The OpenID Connect callback of a control plane listening on `port`.
fn callback(port: u16) -> String {
    format!("https://localhost:{port}/api/v1/auth/oidc/callback")
}

/// A harness on `port` with single sign-on through `provider`.
async fn with_sso(provider: &OidcProvider, port: u16, auto_create: bool) -> Harness {
    let mut oidc = OidcConfig::new(provider.issuer(), OidcProvider::CLIENT_ID, callback(port));
    oidc.client_secret = Some(Zeroizing::new(OidcProvider::CLIENT_SECRET.to_owned()));
    Harness::start_with(move |c| {
        c.listen = ([127, 0, 0, 1], port).into();
        c.oidc = Some(oidc);
        c.oidc_auto_create = auto_create;
    })
    .await
}

/// Plays the browser: starts a login at the control plane, logs `login` in at the provider and
/// returns the query string the provider sent the browser back with.
async fn sso(h: &Harness, provider: &OidcProvider, login: &str) -> String {
    let begin = h.client().get("/api/v1/auth/oidc/login").await.unwrap();
    let url = begin["authorization_url"].as_str().unwrap().to_owned();
    // The login runs Node.js and waits for it.
    let landed = tokio::task::block_in_place(|| provider.authorize(&url, login)).unwrap();
    let port = h.cp.local_addr().port();
    let query = landed
        .strip_prefix(&format!("{}?", callback(port)))
        .unwrap_or_else(|| panic!("landed elsewhere: {landed}"));
    query.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_through_a_real_openid_provider() {
    let (open, closed) = (
        tidegate_testkit::free_port().unwrap(),
        tidegate_testkit::free_port().unwrap(),
    );
    let redirects = [callback(open), callback(closed)];
    let provider = tokio::task::spawn_blocking(move || {
        OidcProvider::start(&[redirects[0].as_str(), redirects[1].as_str()])
    })
    .await
    .unwrap()
    .unwrap();

    // With auto-creation, a person the provider vouches for becomes a user without roles.
    let h = with_sso(&provider, open, true).await;
    let query = sso(&h, &provider, "alice").await;
    let path = format!("/api/v1/auth/oidc/callback?{query}");
    let answer = h.client().get(&path).await.unwrap();
    assert_eq!(answer["user"]["username"], json!("alice@example.test"));
    let alice = h.client().with_token(answer["token"].as_str().unwrap());
    let me = alice.get("/api/v1/auth/me").await.unwrap();
    assert_eq!(me["username"], json!("alice@example.test"));
    assert_eq!(me["system_roles"], json!([]));
    assert_eq!(me["spaces"], json!([]));
    // The state is used once: the same callback again is refused.
    assert_eq!(status(h.client().get(&path)).await, 401);
    // A second login finds the same user.
    let query = sso(&h, &provider, "alice").await;
    let again = h
        .client()
        .get(&format!("/api/v1/auth/oidc/callback?{query}"))
        .await
        .unwrap();
    assert_eq!(again["user"]["id"], answer["user"]["id"]);
    // Forged state, and the provider's refusal.
    assert_eq!(
        status(
            h.client()
                .get("/api/v1/auth/oidc/callback?code=abc&state=forged")
        )
        .await,
        401
    );
    assert_eq!(
        status(
            h.client()
                .get("/api/v1/auth/oidc/callback?error=access_denied")
        )
        .await,
        401
    );
    let events = h
        .login(ADMIN, ADMIN_PASSWORD)
        .await
        .get("/api/v1/audit?action=session.login")
        .await
        .unwrap();
    let oidc_logins = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["detail"]["method"] == json!("oidc") && e["outcome"] == json!("success"))
        .count();
    assert_eq!(oidc_logins, 2, "{events}");

    // Without it, an unknown person is refused.
    let h = with_sso(&provider, closed, false).await;
    let query = sso(&h, &provider, "carol").await;
    let error = h
        .client()
        .get(&format!("/api/v1/auth/oidc/callback?{query}"))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.to_string().contains("no such user"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_planes_sharing_a_postgres_database_agree() {
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("metadata").unwrap();
    let url = pg.url("metadata");
    // Both hold the same key file: the key-encryption key must be shared too.
    let state = tempfile::tempdir().unwrap();
    let shared = |c: &mut tidegate::control_plane::ControlPlaneConfig| {
        c.state_dir = Some(state.path().to_path_buf());
        c.database_url = Some(url.clone());
    };
    let a = Harness::start_with(shared).await;
    let b = Harness::start_with(shared).await;
    assert_eq!(a.cp.tenant_id(), b.cp.tenant_id());
    assert_eq!(a.cp.default_space_id(), b.cp.default_space_id());
    assert!(!state.path().join("metadata.db").exists());

    let admin = a.login(ADMIN, ADMIN_PASSWORD).await;
    let space = new_space(&admin, "shared").await;
    let dave = user(&admin, "dave").await;
    grant(&admin, &space, &dave, "can_view").await;
    // Dave logs in at B and reads the space A gave him.
    let at_b = b.login("dave", PASSWORD).await;
    let path = format!("/api/v1/spaces/{space}");
    at_b.get(&path).await.unwrap();
    // A takes the role back: B refuses Dave's next request.
    admin
        .delete(&format!(
            "/api/v1/spaces/{space}/members/{dave}/roles/can_view"
        ))
        .await
        .unwrap();
    assert_eq!(status(at_b.get(&path)).await, 403);
    // A session ended at A is ended at B.
    let session = b.login("dave", PASSWORD).await;
    session.get("/api/v1/auth/me").await.unwrap();
    admin
        .patch(&format!("/api/v1/users/{dave}"), &json!({"disabled": true}))
        .await
        .unwrap();
    assert_eq!(status(session.get("/api/v1/auth/me")).await, 401);
    // Each logs its own requests into the one audit log.
    let events = b
        .login(ADMIN, ADMIN_PASSWORD)
        .await
        .get("/api/v1/audit?action=member.revoke")
        .await
        .unwrap();
    assert_eq!(events["items"].as_array().unwrap().len(), 1, "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_tasks_and_gateways_change_and_go() {
    let h = Harness::start().await;
    let c = h.operator();
    let source = c
        .post(
            "/api/v1/connections",
            &json!({"name": "shop", "kind": "postgres",
                    "settings": {"host": "db", "database": "shop", "user": "reader"},
                    "secrets": {"password": "first-canary"}}),
        )
        .await
        .unwrap();
    let source_id = source["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/connections/{source_id}");

    // Secrets: set one, remove another, keep the rest; only names come back.
    let changed = c
        .patch(
            &path,
            &json!({"name": "shop-eu", "secrets": {"ssl_key": "second-canary", "password": null}}),
        )
        .await
        .unwrap();
    assert_eq!(changed["name"], "shop-eu");
    assert_eq!(changed["secret_names"], json!(["ssl_key"]));
    assert_eq!(changed["settings"]["host"], "db");
    assert!(!changed.to_string().contains("canary"), "{changed}");
    // Settings are replaced as a whole and checked like at creation.
    let error = c
        .patch(&path, &json!({"settings": {"host": "db"}}))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    assert!(error.to_string().contains("database"), "{error}");
    let error = c
        .patch(&path, &json!({"kind": "sqlite"}))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    // A change against an old version is refused, and changes nothing.
    let error = c
        .patch(&path, &json!({"name": "stale", "version": 1}))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(409), "{error}");
    assert_eq!(c.get(&path).await.unwrap()["name"], "shop-eu");

    let target = c
        .post(
            "/api/v1/connections",
            &json!({"name": "lake", "kind": "local", "settings": {"root": "/srv/lake", "prefix": "shop"}}),
        )
        .await
        .unwrap();
    let target_id = target["id"].as_str().unwrap();
    let gateway = c
        .post("/api/v1/gateways", &json!({"name": "plant"}))
        .await
        .unwrap();
    let gateway_id = gateway["id"].as_str().unwrap();
    let task = c
        .post(
            "/api/v1/tasks",
            &json!({"name": "copy", "gateway_id": gateway_id, "source_id": source_id,
                    "target_id": target_id, "schedule": "0 3 * * *"}),
        )
        .await
        .unwrap();
    let task_path = format!("/api/v1/tasks/{}", task["id"].as_str().unwrap());

    // What a consumer learns: where the data lands, never credentials; no run completed yet.
    let output = c.get(&format!("{task_path}/output")).await.unwrap();
    assert_eq!(output["target"]["kind"], "local");
    assert_eq!(output["target"]["location"]["prefix"], "shop");
    assert_eq!(output["run"], Value::Null);

    // Objects in use are not deleted.
    for used in [path.clone(), format!("/api/v1/gateways/{gateway_id}")] {
        let error = c.delete(&used).await.unwrap_err();
        assert_eq!(error.status(), Some(409), "{used}: {error}");
    }
    // A task changes field by field; `schedule: null` removes the schedule.
    let changed = c
        .patch(
            &task_path,
            &json!({"schedule": null, "tables": {"include": ["public.*"]}}),
        )
        .await
        .unwrap();
    assert_eq!(changed["schedule"], Value::Null);
    assert_eq!(changed["name"], "copy");
    assert_eq!(changed["tables"]["include"], json!(["public.*"]));
    let error = c
        .patch(&task_path, &json!({"source_id": "conn_nope"}))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404), "{error}");

    // Concurrent changes without a version all apply (the last one wins), none is refused.
    let changes = (0..8).map(|i| {
        let (c, path) = (c.clone(), task_path.clone());
        tokio::spawn(async move { c.patch(&path, &json!({"name": format!("copy {i}")})).await })
    });
    for change in futures::future::join_all(changes).await {
        change.unwrap().unwrap();
    }
    let names: Vec<String> = (0..8).map(|i| format!("copy {i}")).collect();
    let now = c.get(&task_path).await.unwrap();
    assert!(
        names.contains(&now["name"].as_str().unwrap().to_owned()),
        "{now}"
    );
    assert_eq!(
        now["version"],
        json!(changed["version"].as_i64().unwrap() + 8)
    );

    // Revoking a gateway keeps it listed, deactivated, with the reason.
    let revoked = c
        .post(
            &format!("/api/v1/gateways/{gateway_id}/revoke"),
            &json!({"reason": "host decommissioned"}),
        )
        .await
        .unwrap();
    assert_eq!(revoked["state"]["state"], "deactivated", "{revoked}");
    assert_eq!(revoked["state"]["reason"], "host decommissioned");

    // Once the task is gone, so can its connections and gateway be.
    c.delete(&task_path).await.unwrap();
    assert_eq!(c.get(&task_path).await.unwrap_err().status(), Some(404));
    c.delete(&path).await.unwrap();
    c.delete(&format!("/api/v1/gateways/{gateway_id}"))
        .await
        .unwrap();
    assert_eq!(c.get(&path).await.unwrap_err().status(), Some(404));
}

/// The document the control plane serves is the one of its routes, and each operation in it
/// reaches a handler: none falls through to "no such route" or "method not allowed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_matches_the_routes() {
    let h = Harness::start().await;
    let anonymous = h.client();
    let served = anonymous.get("/api/v1/openapi.json").await.unwrap();
    assert_eq!(
        served,
        serde_json::to_value(tidegate::control_plane::openapi()).unwrap()
    );
    let c = h.operator();
    let mut checked = 0;
    for (path, item) in served["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "x_nope")
            .replace("{user_id}", "usr_nope")
            .replace("{role}", "can_view");
        for method in item.as_object().unwrap().keys() {
            let result = match method.as_str() {
                "get" => c.get(&concrete).await,
                "post" => c.post(&concrete, &json!({})).await,
                "put" => c.put(&concrete, &json!({})).await,
                "patch" => c.patch(&concrete, &json!({})).await,
                "delete" => c.delete(&concrete).await,
                other => panic!("{other} {path}: unexpected method"),
            };
            if let Err(tidegate::client::Error::Api {
                status, message, ..
            }) = &result
            {
                assert_ne!(*status, 405, "{method} {path}: {message}");
                assert_ne!(message, "no such route", "{method} {path}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 48, "only {checked} operations documented");
    // And a route that is not documented is not served.
    let error = c.get("/api/v1/nothing-here").await.unwrap_err();
    assert_eq!(error.status(), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_products_bundle_only_what_their_maker_may_consume() {
    let h = Harness::start().await;
    let admin = h.login(ADMIN, ADMIN_PASSWORD).await;
    let operator = h.operator();
    let space = new_space(&admin, "sales").await;
    let connection = operator
        .post(
            "/api/v1/connections",
            &json!({"space_id": space, "name": "db", "kind": "sqlite",
                    "settings": {"path": "/tmp/db.sqlite"}}),
        )
        .await
        .unwrap();
    let gateway = operator
        .post(
            "/api/v1/gateways",
            &json!({"space_id": space, "name": "gw"}),
        )
        .await
        .unwrap();
    let task = operator
        .post(
            "/api/v1/tasks",
            &json!({"space_id": space, "name": "orders", "gateway_id": gateway["id"],
                    "source_id": connection["id"], "target_id": connection["id"]}),
        )
        .await
        .unwrap();
    let pm = user(&admin, "pm").await;
    admin
        .put(
            &format!("/api/v1/users/{pm}/system-roles/data_product_manager"),
            &json!({}),
        )
        .await
        .unwrap();
    let pm_session = h.login("pm", PASSWORD).await;
    let body = json!({"name": "Orders", "description": "Every order, daily",
                      "task_ids": [task["id"]]});

    // Without the right to consume the task's data, no product of it.
    let error = pm_session
        .post("/api/v1/data-products", &body)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.to_string().contains("data_consume"), "{error}");
    grant(&admin, &space, &pm, "can_consume").await;
    let product = pm_session
        .post("/api/v1/data-products", &body)
        .await
        .unwrap();
    assert_eq!(product["task_ids"], json!([task["id"]]));
    assert_eq!(product["created_by"], json!(pm));
    // Names are unique; unknown tasks are not bundled.
    let error = pm_session
        .post("/api/v1/data-products", &body)
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(409), "{error}");
    let error = pm_session
        .post(
            "/api/v1/data-products",
            &json!({"name": "Ghost", "task_ids": ["task_nope"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404), "{error}");
    // Anyone signed in sees the catalog; nobody anonymous does.
    user(&admin, "reader").await;
    let listed = h
        .login("reader", PASSWORD)
        .await
        .get("/api/v1/data-products")
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([product]));
    let error = h.client().get("/api/v1/data-products").await.unwrap_err();
    assert_eq!(error.status(), Some(401), "{error}");
}
