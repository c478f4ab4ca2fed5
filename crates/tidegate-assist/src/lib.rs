//! The optional generative-AI assist: descriptions for tables and columns, suggested by a
//! language model behind an OpenAI-compatible chat-completions endpoint.
//!
//! **Off by default.** Nothing here runs unless the control plane builds an [`Assistant`], which
//! it does only for a tenant whose administrator turned the assist on, with the endpoint
//! configured for the tenant's region.
//!
//! **Metadata only.** The one thing sent is a [`SchemaMetadata`]: schema, table and column
//! names, type names, nullability and row counts. Its fields are names, type names and
//! numbers, and it is built from [`TableDescription`]s, which the gateway fills from the
//! catalog; no type in this crate can hold a row value, so none can be sent. What comes back
//! is treated as untrusted text: only descriptions of tables and columns that were asked about
//! are kept, control characters are removed and lengths are capped.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidegate_proto::{SecretString, TableDescription};
/// The URL type of [`AssistEndpoint::base_url`].
pub use url::Url;

/// Longest description kept, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Most tables sent in one request.
pub const MAX_TABLES: usize = 200;
/// Largest response body read, in bytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a suggestion failed. Messages never carry the API key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid (too many tables, nothing to describe).
    #[error("invalid assist request: {0}")]
    Invalid(&'static str),
    /// The endpoint could not be reached or timed out.
    #[error("assist endpoint {endpoint} unreachable: {reason}")]
    Unreachable {
        /// The endpoint's base URL.
        endpoint: String,
        /// The transport error.
        reason: String,
    },
    /// The endpoint answered with an HTTP error.
    #[error("assist endpoint {endpoint} answered HTTP {status}")]
    Status {
        /// The endpoint's base URL.
        endpoint: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer was not the JSON asked for.
    #[error("assist endpoint {endpoint} answered with an unusable response: {reason}")]
    Response {
        /// The endpoint's base URL.
        endpoint: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// An OpenAI-compatible endpoint in one region.
#[derive(Clone)]
pub struct AssistEndpoint {
    /// The region it serves (the tenant's data residency region), e.g. `eu-west`.
    pub region: String,
    /// The API base URL; requests go to `<base>/chat/completions`.
    pub base_url: url::Url,
    /// The model name.
    pub model: String,
    /// The bearer API key, if the endpoint needs one.
    pub api_key: Option<SecretString>,
}

impl std::fmt::Debug for AssistEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssistEndpoint")
            .field("region", &self.region)
            .field("base_url", &self.base_url.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What the model is told about a set of tables: names, types and counts, nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaMetadata {
    /// The tables.
    pub tables: Vec<TableMetadata>,
}

/// One table's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMetadata {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Row count, when known.
    pub row_count: Option<u64>,
    /// Columns in order.
    pub columns: Vec<ColumnMetadata>,
}

/// One column's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMetadata {
    /// Column name.
    pub name: String,
    /// Type name (Arrow's).
    pub data_type: String,
    /// Whether it may be NULL.
    pub nullable: bool,
}

impl SchemaMetadata {
    /// Metadata of discovered tables, with row counts by `schema.name` where known.
    pub fn from_descriptions(
        tables: &[TableDescription],
        row_counts: &BTreeMap<String, u64>,
    ) -> Self {
        Self {
            tables: tables
                .iter()
                .map(|t| TableMetadata {
                    schema: t.schema.clone(),
                    name: t.name.clone(),
                    row_count: row_counts.get(&format!("{}.{}", t.schema, t.name)).copied(),
                    columns: t
                        .columns
                        .iter()
                        .map(|c| ColumnMetadata {
                            name: c.name.clone(),
                            data_type: c.data_type.clone(),
                            nullable: c.nullable,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Suggested descriptions, only for tables and columns that were asked about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestions {
    /// By `(schema, table)`.
    pub tables: BTreeMap<(String, String), TableSuggestion>,
}

/// One table's suggested descriptions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSuggestion {
    /// The table's description.
    pub description: Option<String>,
    /// Column descriptions by column name.
    pub columns: BTreeMap<String, String>,
}

/// The instructions sent with every request.
const INSTRUCTIONS: &str = "You document database schemas. The user message is JSON describing \
tables (schema, name, row_count, columns with name, data_type, nullable). Answer with one JSON \
object: {\"tables\": [{\"schema\": ..., \"name\": ..., \"description\": ..., \"columns\": \
[{\"name\": ..., \"description\": ...}]}]}. One sentence per description.";

/// The chat-completions request body. Its only free-form content is the instructions above and
/// the serialized [`SchemaMetadata`].
#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: [ChatMessage; 2],
    response_format: ResponseFormat,
    temperature: f32,
}

#[derive(Serialize)]
struct ChatMessage {
    role: &'static str,
    content: String,
}

#[derive(Serialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Deserialize)]
struct AnswerMessage {
    content: String,
}

#[derive(Deserialize)]
struct Answer {
    tables: Vec<AnswerTable>,
}

#[derive(Deserialize)]
struct AnswerTable {
    schema: String,
    name: String,
    description: Option<String>,
    #[serde(default)]
    columns: Vec<AnswerColumn>,
}

#[derive(Deserialize)]
struct AnswerColumn {
    name: String,
    description: Option<String>,
}

/// Asks one endpoint for descriptions.
#[derive(Debug, Clone)]
pub struct Assistant {
    endpoint: AssistEndpoint,
    http: reqwest::Client,
}

impl Assistant {
    /// An assistant for `endpoint` using `http` (whose TLS and proxy settings the caller owns;
    /// it should not follow redirects).
    pub fn new(endpoint: AssistEndpoint, http: reqwest::Client) -> Self {
        Self { endpoint, http }
    }

    /// The endpoint it asks.
    pub fn endpoint(&self) -> &AssistEndpoint {
        &self.endpoint
    }

    /// Suggests descriptions for the tables and columns of `schema`.
    pub async fn suggest(&self, schema: &SchemaMetadata) -> Result<Suggestions, Error> {
        if schema.tables.is_empty() {
            return Err(Error::Invalid("no tables to describe"));
        }
        if schema.tables.len() > MAX_TABLES {
            return Err(Error::Invalid("more than 200 tables in one request"));
        }
        let endpoint = self.endpoint.base_url.as_str().to_owned();
        let body = ChatRequest {
            model: &self.endpoint.model,
            messages: [
                ChatMessage {
                    role: "system",
                    content: INSTRUCTIONS.to_owned(),
                },
                ChatMessage {
                    role: "user",
                    content: serde_json::to_string(schema).expect("metadata serializes"),
                },
            ],
            response_format: ResponseFormat {
                kind: "json_object",
            },
            temperature: 0.0,
        };
        let url = self
            .endpoint
            .base_url
            .join("chat/completions")
            .map_err(|e| Error::Response {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        let mut request = self
            .http
            .post(url)
            .timeout(Duration::from_secs(60))
            .json(&body);
        if let Some(key) = &self.endpoint.api_key {
            request = request.bearer_auth(key.expose());
        }
        let unreachable = |e: reqwest::Error| Error::Unreachable {
            endpoint: endpoint.clone(),
            reason: without_url(e),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(Error::Status {
                endpoint,
                status: response.status().as_u16(),
            });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Error::Response {
                    endpoint,
                    reason: "larger than 1 MiB".into(),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let bad = |reason: String| Error::Response {
            endpoint: endpoint.clone(),
            reason,
        };
        let chat: ChatResponse = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a chat completion: {e}")))?;
        let content = chat
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| bad("no choices".into()))?
            .message
            .content;
        let answer: Answer = serde_json::from_str(&content)
            .map_err(|e| bad(format!("the model's answer is not the JSON asked for: {e}")))?;
        Ok(keep_known(schema, answer))
    }
}

/// Keeps only descriptions of tables and columns that were asked about, cleaned and capped.
fn keep_known(schema: &SchemaMetadata, answer: Answer) -> Suggestions {
    let mut suggestions = Suggestions::default();
    for table in answer.tables {
        let Some(asked) = schema
            .tables
            .iter()
            .find(|t| t.schema == table.schema && t.name == table.name)
        else {
            continue;
        };
        let entry = suggestions
            .tables
            .entry((table.schema, table.name))
            .or_default();
        if let Some(d) = table.description.as_deref().and_then(clean) {
            entry.description = Some(d);
        }
        for column in table.columns {
            if !asked.columns.iter().any(|c| c.name == column.name) {
                continue;
            }
            if let Some(d) = column.description.as_deref().and_then(clean) {
                entry.columns.insert(column.name, d);
            }
        }
    }
    suggestions
}

/// Removes control characters, trims and caps a description; `None` when nothing is left.
fn clean(text: &str) -> Option<String> {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_DESCRIPTION_CHARS)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// A transport error's message without its URL (which could carry credentials a misconfigured
/// endpoint put there).
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
