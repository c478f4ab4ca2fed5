//! The control plane's REST API: bad input gets a clear 4xx and changes nothing; failures of
//! runs reach the operator as metadata.

use crate::common;

use std::sync::{Arc, Mutex};

use common::{Harness, OPERATOR};
use serde_json::{Value, json};
use tidegate::metadata::{MetadataStore, PageRequest};

/// Sends a raw request and returns the status and the JSON body.
async fn raw(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let ca = reqwest::Certificate::from_pem(h.ca.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("https://localhost:{}{path}", h.cp.local_addr().port());
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.header("content-type", "application/json").body(b);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let value = response.json().await.unwrap_or(Value::Null);
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let h = Harness::start().await;
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(100_000));
    // (name, method, path, bearer token, body, expected status, text the message must hold)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<String>,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "no token",
            "POST",
            "/api/v1/gateways",
            None,
            Some(r#"{"name":"a"}"#.into()),
            401,
            "bearer",
        ),
        (
            "wrong token",
            "POST",
            "/api/v1/gateways",
            Some("nope"),
            Some(r#"{"name":"a"}"#.into()),
            401,
            "unknown",
        ),
        (
            "invalid JSON",
            "POST",
            "/api/v1/gateways",
            Some(OPERATOR),
            Some("{".into()),
            400,
            "",
        ),
        (
            "unknown field",
            "POST",
            "/api/v1/gateways",
            Some(OPERATOR),
            Some(r#"{"name":"a","admin":true}"#.into()),
            400,
            "admin",
        ),
        (
            "oversized body",
            "POST",
            "/api/v1/gateways",
            Some(OPERATOR),
            Some(big),
            413,
            "larger",
        ),
        (
            "empty name",
            "POST",
            "/api/v1/gateways",
            Some(OPERATOR),
            Some(r#"{"name":""}"#.into()),
            400,
            "name",
        ),
        (
            "control characters",
            "POST",
            "/api/v1/gateways",
            Some(OPERATOR),
            Some(r#"{"name":"a\u0000b"}"#.into()),
            400,
            "control",
        ),
        (
            "unknown connection kind",
            "POST",
            "/api/v1/connections",
            Some(OPERATOR),
            Some(r#"{"name":"c","kind":"oracle"}"#.into()),
            400,
            "known kinds",
        ),
        (
            "missing setting",
            "POST",
            "/api/v1/connections",
            Some(OPERATOR),
            Some(r#"{"name":"c","kind":"sqlite"}"#.into()),
            400,
            "path",
        ),
        (
            "task on unknown connection",
            "POST",
            "/api/v1/tasks",
            Some(OPERATOR),
            Some(r#"{"name":"t","gateway_id":"gw_x","source_id":"a","target_id":"b"}"#.into()),
            404,
            "gateway gw_x",
        ),
        (
            "unknown run",
            "GET",
            "/api/v1/runs/run_x",
            Some(OPERATOR),
            None,
            404,
            "run run_x",
        ),
        (
            "bad enrollment token",
            "POST",
            "/api/v1/gateways/enroll",
            None,
            Some(r#"{"token":"tge_AAAA","public_key":"AAAA"}"#.into()),
            401,
            "enrollment token",
        ),
        (
            "unknown route",
            "GET",
            "/api/v1/nothing",
            Some(OPERATOR),
            None,
            404,
            "route",
        ),
    ];
    for (name, method, path, token, body, want, mention) in cases {
        let (status, value) = raw(&h, method, path, token, body).await;
        assert_eq!(status, want, "{name}: {value}");
        let message = value["error"]["message"].as_str().unwrap_or_default();
        assert!(
            value["error"]["code"].is_string() && message.contains(mention),
            "{name}: unclear error {value}"
        );
    }
    let space = h.cp.default_space_id();
    let page = PageRequest::default();
    let store = h.cp.store();
    assert!(
        store.gateways(space, &page).await.unwrap().items.is_empty(),
        "a refused request created a gateway"
    );
    assert!(
        store
            .connections(space, &page)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_failures_reach_the_operator_as_metadata() {
    let h = Harness::start().await;
    let (id, config, identity) = h.enrolled("a").await;
    let (_, _, task) = h
        .create_task(
            &id,
            json!({"name": "missing", "kind": "sqlite", "settings": {"path": "/nonexistent/db.sqlite"}}),
            json!({"name": "out", "kind": "local",
                   "settings": {"root": h.dir.path().join("out").display().to_string()}}),
        )
        .await;
    let runs = format!("/api/v1/tasks/{}/runs", task["id"].as_str().unwrap());

    // The gateway is offline: the run cannot start, and says why.
    let err = h.api.post(&runs, json!({})).await.unwrap_err().to_string();
    assert!(err.contains("409") && err.contains("offline"), "{err}");

    let gateway = h.online(&id, config, identity).await;
    let run = h.api.post(&runs, json!({})).await.unwrap();
    let last = h.wait_run_end(run["id"].as_str().unwrap()).await;
    assert_eq!(last["state"], json!("Failed"), "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains("nonexistent/db.sqlite"),
        "error does not name the source: {error}"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_leaves_no_complete_looking_output() {
    let h = Harness::start().await;
    let (id, config, identity) = h.enrolled("a").await;
    let source = h.dir.path().join("big.sqlite");
    tidegate::replicate::sample::generate_sqlite(
        &source,
        tidegate::replicate::sample::SampleSize::rows(1_000_000),
    )
    .await
    .unwrap();
    let out = h.dir.path().join("out");
    let (_, _, task) = h
        .create_task(
            &id,
            json!({"name": "big", "kind": "sqlite", "settings": {"path": source.display().to_string()}}),
            json!({"name": "out", "kind": "local", "settings": {"root": out.display().to_string()}}),
        )
        .await;
    let task_id = task["id"].as_str().unwrap();
    let gateway = h.online(&id, config, identity).await;

    // Stopping a task that is not running is refused with a reason.
    let err = h
        .api
        .post(&format!("/api/v1/tasks/{task_id}/stop"), json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not running"), "{err}");

    let run = h
        .api
        .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
        .await
        .unwrap();
    let run_id = run["id"].as_str().unwrap().to_owned();
    // A second start while it runs is a conflict.
    let err = h
        .api
        .post(&format!("/api/v1/tasks/{task_id}/runs"), json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("409") && err.contains("already running"),
        "{err}"
    );

    h.api
        .post(&format!("/api/v1/tasks/{task_id}/stop"), json!({}))
        .await
        .unwrap();
    let last = h.wait_run_end(&run_id).await;
    assert_eq!(last["state"], json!("Stopped"), "{last}");
    // Every table that did not finish has no manifest: nothing looks complete that is not.
    for table in ["customers", "orders", "events"] {
        let dir = out.join("main").join(table).join(&run_id);
        let finished = last["tables"][format!("main.{table}")]["state"] == json!("Done");
        assert_eq!(
            dir.join("_manifest.json").exists(),
            finished,
            "main.{table}: manifest does not match state {last}"
        );
    }
    assert!(
        last["tables"]
            .as_object()
            .unwrap()
            .values()
            .any(|t| t["state"] != json!("Done")),
        "the run finished before the stop arrived: make the sample larger"
    );
    gateway.shutdown().await;
}

/// A stand-in for an OpenAI-compatible endpoint (no real language model can run here): it
/// records every request body and answers with a description for each table and column it
/// was told about.
/// What the stand-in endpoint received: the authorization header and the body of each request.
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

async fn fake_model() -> (String, Received) {
    use axum::http::HeaderMap;
    let seen = Received::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let log = log.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let asked: Value =
                    serde_json::from_str(body["messages"][1]["content"].as_str().unwrap())
                        .unwrap();
                log.lock().unwrap().push((auth, body.0.clone()));
                let tables: Vec<Value> = asked["tables"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        let columns: Vec<Value> = t["columns"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| json!({"name": c["name"], "description": format!("The {}.", c["name"].as_str().unwrap())}))
                            .collect();
                        json!({"schema": t["schema"], "name": t["name"],
                               "description": format!("All {}.", t["name"].as_str().unwrap()),
                               "columns": columns})
                    })
                    .collect();
                let content = json!({"tables": tables}).to_string();
                axum::Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_assist_is_off_until_turned_on_and_sends_metadata_only() {
    let (url, seen) = fake_model().await;
    let h = Harness::start_with(|c| {
        c.assist = vec![tidegate::assist::AssistEndpoint {
            region: "eu-west".into(),
            base_url: tidegate::assist::Url::parse(&url).unwrap(),
            model: "describer".into(),
            api_key: Some(tidegate::proto::SecretString::new("assist-key")),
        }];
    })
    .await;
    let (id, config, identity) = h.enrolled("a").await;
    // A source whose rows hold canary values: none may leave the gateway.
    let source = h.dir.path().join("shop.sqlite");
    let url_of = format!("sqlite://{}?mode=rwc", source.display());
    let pool = sqlx::SqlitePool::connect(&url_of).await.unwrap();
    sqlx::query("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT, balance REAL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO customers VALUES (1, 'canary-7f3a@example.com', 1234.5678)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let connection = h
        .api
        .post(
            "/api/v1/connections",
            json!({"name": "shop", "kind": "sqlite", "settings": {"path": source.display().to_string()}}),
        )
        .await
        .unwrap();
    let describe = format!(
        "/api/v1/connections/{}/describe",
        connection["id"].as_str().unwrap()
    );
    let gateway = h.online(&id, config, identity).await;

    // Off by default: refused, and the endpoint hears nothing.
    let settings = h.api.get("/api/v1/settings/assist").await.unwrap();
    assert_eq!(settings["enabled"], false);
    assert_eq!(settings["available_regions"], json!(["eu-west"]));
    let refused = h
        .api
        .post(&describe, json!({"gateway_id": id}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("409") && refused.contains("off"),
        "{refused}"
    );
    assert!(seen.lock().unwrap().is_empty());
    // Turning it on needs a region with an endpoint.
    let operator = h.operator();
    let bad = operator
        .put(
            "/api/v1/settings/assist",
            &json!({"enabled": true, "region": "mars"}),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status(), Some(400), "{bad}");
    assert!(bad.to_string().contains("mars"), "{bad}");
    operator
        .put(
            "/api/v1/settings/assist",
            &json!({"enabled": true, "region": "eu-west"}),
        )
        .await
        .unwrap();

    let answer = h
        .api
        .post(&describe, json!({"gateway_id": id}))
        .await
        .unwrap();
    assert_eq!(answer["region"], "eu-west");
    let customers = answer["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "customers")
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(customers["description"], "All customers.");
    assert_eq!(customers["columns"]["email"], "The email.");

    // What the endpoint received: names, types and counts, with the configured key; no value.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (auth, body) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer assist-key"));
    let sent = body.to_string();
    for value in ["canary-7f3a", "1234.5678"] {
        assert!(!sent.contains(value), "a row value was sent: {sent}");
    }
    let asked: Value =
        serde_json::from_str(body["messages"][1]["content"].as_str().unwrap()).unwrap();
    let table = asked["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "customers")
        .unwrap();
    let columns: Vec<&str> = table["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["id", "email", "balance"]);
    // Only the schema types' fields: nothing that could carry a value.
    let mut keys: Vec<&String> = table.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["columns", "name", "row_count", "schema"]);
    gateway.shutdown().await;
}

/// Reads every Parquet part under `dir`, with the key if given; the total rows.
fn parquet_rows(dir: &std::path::Path, key: Option<&[u8]>) -> parquet::errors::Result<usize> {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::encryption::decrypt::FileDecryptionProperties;
    let mut rows = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let mut options = ArrowReaderOptions::new();
                if let Some(key) = key {
                    options = options.with_file_decryption_properties(
                        FileDecryptionProperties::builder(key.to_vec()).build()?,
                    );
                }
                let file = std::fs::File::open(&path).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?
                    .build()?;
                for batch in reader {
                    rows += batch?.num_rows();
                }
            }
        }
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_storage_is_written_under_the_tenant_key() {
    let h = Harness::start().await;
    let (id, config, identity) = h.enrolled("a").await;
    let source = h.dir.path().join("shop.sqlite");
    tidegate::replicate::sample::generate_sqlite(
        &source,
        tidegate::replicate::sample::SampleSize::rows(3_000),
    )
    .await
    .unwrap();
    let out = h.dir.path().join("managed");
    let (_, target, task) = h
        .create_task(
            &id,
            json!({"name": "shop", "kind": "sqlite", "settings": {"path": source.display().to_string()}}),
            json!({"name": "managed", "kind": "local",
                   "settings": {"root": out.display().to_string(), "encryption": "tenant"}}),
        )
        .await;
    // The key is nowhere in the API: not a setting, not a secret name.
    assert_eq!(target["secret_names"], json!([]));
    assert!(
        target["settings"].get("parquet_key_id").is_none(),
        "{target}"
    );
    let gateway = h.online(&id, config, identity).await;
    let finished = h.run_to_end(task["id"].as_str().unwrap()).await;
    assert_eq!(finished["state"], json!("Completed"), "{finished}");
    gateway.shutdown().await;

    // Without the tenant's key the files do not read; with it, every row is there.
    assert!(
        parquet_rows(&out, None).is_err(),
        "encrypted files read without a key"
    );
    let key = h.cp.tenant_parquet_key().await.unwrap();
    assert!(key.key_id.contains(h.cp.tenant_id()), "{}", key.key_id);
    assert_eq!(
        format!("{key:?}"),
        format!("ParquetKey {{ key_id: {:?}, .. }}", key.key_id),
        "Debug shows the id only"
    );
    let wrong = [7u8; 32];
    assert!(
        parquet_rows(&out, Some(&wrong)).is_err(),
        "read with another key"
    );
    let expected: u64 = finished["tables"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["rows"].as_u64().unwrap())
        .sum();
    assert!(expected > 0);
    assert_eq!(parquet_rows(&out, Some(&key.key)).unwrap() as u64, expected);
    // The key stays the same from one call (and run) to the next.
    assert_eq!(*h.cp.tenant_parquet_key().await.unwrap().key, *key.key);

    // Bad values of the setting are refused up front.
    let refused = h
        .api
        .post(
            "/api/v1/connections",
            json!({"name": "x", "kind": "local", "settings": {"root": "/tmp/x", "encryption": "rot13"}}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("encryption"), "{refused}");
}
