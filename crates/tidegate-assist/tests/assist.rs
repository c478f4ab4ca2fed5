//! The assist against a local OpenAI-compatible HTTP server: what is sent is metadata only, and
//! what comes back is kept only where it describes what was asked.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tidegate_assist::{AssistEndpoint, Assistant, Error, SchemaMetadata};
use tidegate_proto::{ColumnDescription, SecretString, TableDescription};

#[derive(Default)]
struct Seen {
    body: Option<Value>,
    authorization: Option<String>,
}

/// Starts an endpoint that records the request and answers `answer` (the model's content) with
/// `status`.
async fn endpoint(status: StatusCode, content: String) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorded = Arc::clone(&seen);
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, body: String| {
            let recorded = Arc::clone(&recorded);
            let content = content.clone();
            async move {
                let mut seen = recorded.lock().unwrap();
                seen.body = Some(serde_json::from_str(&body).unwrap());
                seen.authorization = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let answer =
                    json!({"choices": [{"message": {"role": "assistant", "content": content}}]});
                (status, answer.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1/"), seen)
}

fn assistant(base: &str) -> Assistant {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Assistant::new(
        AssistEndpoint {
            region: "eu-west".into(),
            base_url: base.parse().unwrap(),
            model: "test-model".into(),
            api_key: Some(SecretString::new("sk-canary-key")),
        },
        reqwest::Client::new(),
    )
}

fn tables() -> Vec<TableDescription> {
    let column = |name: &str, data_type: &str| ColumnDescription {
        name: name.into(),
        data_type: data_type.into(),
        nullable: true,
    };
    vec![
        TableDescription {
            schema: "sales".into(),
            name: "orders".into(),
            columns: vec![
                column("id", "Int64"),
                column("placed_at", "Timestamp(µs, UTC)"),
            ],
        },
        TableDescription {
            schema: "public".into(),
            name: "We\"ird Tåble".into(),
            columns: vec![column("note", "Utf8")],
        },
    ]
}

/// Every string leaf of a JSON value.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_request_carries_metadata_only() {
    let (base, seen) = endpoint(StatusCode::OK, json!({"tables": []}).to_string()).await;
    let counts = BTreeMap::from([("sales.orders".to_owned(), 1_234_u64)]);
    let metadata = SchemaMetadata::from_descriptions(&tables(), &counts);
    assistant(&base).suggest(&metadata).await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.authorization.as_deref(), Some("Bearer sk-canary-key"));
    let body = seen.body.clone().unwrap();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["messages", "model", "response_format", "temperature"]
    );
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[1]["role"], "user");
    // The user message is exactly the metadata (unknown fields would fail to parse) ...
    let sent: SchemaMetadata =
        serde_json::from_str(messages[1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(sent, metadata);
    assert_eq!(sent.tables[0].row_count, Some(1_234));
    // ... whose every string is a schema, table, column or type name that was given.
    let allowed: Vec<String> = tables()
        .iter()
        .flat_map(|t| {
            let mut names = vec![t.schema.clone(), t.name.clone()];
            for c in &t.columns {
                names.push(c.name.clone());
                names.push(c.data_type.clone());
            }
            names
        })
        .collect();
    let mut leaves = Vec::new();
    strings(&serde_json::to_value(&sent).unwrap(), &mut leaves);
    assert!(!leaves.is_empty());
    for leaf in leaves {
        assert!(allowed.contains(&leaf), "unexpected string sent: {leaf:?}");
    }
}

#[tokio::test]
async fn answers_are_kept_only_for_what_was_asked() {
    let long = format!("Orders\u{7}\n placed {}", "x".repeat(2_000));
    let content = json!({"tables": [
        {"schema": "sales", "name": "orders", "description": long,
         "columns": [{"name": "id", "description": "Order number."},
                     {"name": "invented", "description": "Not a column."}]},
        {"schema": "sales", "name": "invented_table", "description": "Not a table."},
        {"schema": "public", "name": "We\"ird Tåble", "description": "   ",
         "columns": [{"name": "note", "description": "Free text."}]}
    ]})
    .to_string();
    let (base, _) = endpoint(StatusCode::OK, content).await;
    let metadata = SchemaMetadata::from_descriptions(&tables(), &BTreeMap::new());
    let suggestions = assistant(&base).suggest(&metadata).await.unwrap();

    assert_eq!(suggestions.tables.len(), 2, "{suggestions:?}");
    let orders = &suggestions.tables[&("sales".to_owned(), "orders".to_owned())];
    let description = orders.description.as_deref().unwrap();
    assert!(
        description.starts_with("Orders   placed xxx"),
        "{description}"
    );
    assert_eq!(
        description.chars().count(),
        tidegate_assist::MAX_DESCRIPTION_CHARS
    );
    assert_eq!(orders.columns.len(), 1);
    assert_eq!(orders.columns["id"], "Order number.");
    let weird = &suggestions.tables[&("public".to_owned(), "We\"ird Tåble".to_owned())];
    assert_eq!(weird.description, None, "blank descriptions are dropped");
    assert_eq!(weird.columns["note"], "Free text.");
}

#[tokio::test]
async fn failures_are_clear_and_never_show_the_key() {
    let metadata = SchemaMetadata::from_descriptions(&tables(), &BTreeMap::new());

    let (base, _) = endpoint(StatusCode::UNAUTHORIZED, String::new()).await;
    let error = assistant(&base).suggest(&metadata).await.unwrap_err();
    assert!(
        matches!(error, Error::Status { status: 401, .. }),
        "{error}"
    );

    let (base, _) = endpoint(StatusCode::OK, "this is not json".into()).await;
    let error = assistant(&base).suggest(&metadata).await.unwrap_err();
    assert!(
        error.to_string().contains("not the JSON asked for"),
        "{error}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = assistant(&format!("http://127.0.0.1:{port}/v1/"))
        .suggest(&metadata)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error}");

    let empty = SchemaMetadata { tables: vec![] };
    assert!(matches!(
        assistant("http://127.0.0.1:9/").suggest(&empty).await,
        Err(Error::Invalid(_))
    ));
    let key_free = format!("{:?}", assistant("http://127.0.0.1:9/"));
    assert!(!key_free.contains("sk-canary-key"), "{key_free}");
}
