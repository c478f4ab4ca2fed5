//! Running commands: connections are opened from their specs, full loads run through
//! `tidegate-replicate`, and only metadata (states, counts, errors) goes back to the link.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use tidegate_proto::{
    ColumnDescription, CommandOutcome, ConnectionSpec, ErrorCode, ErrorReport, Message,
    ProgressReport, TableDescription, TableProgress, TableSelection, TableState, TaskSpec,
    TaskState, TaskStatus,
};
use tidegate_replicate::odbc::ConnectionStringBuilder;
use tidegate_replicate::sqlx::postgres::{PgConnectOptions, PgSslMode};
use tidegate_replicate::{
    CopyPlan, OdbcSource, ParquetSink, ParquetSinkConfig, PostgresSink, PostgresSinkConfig,
    PostgresSource, PostgresSourceConfig, ProgressEvent, ServerSideEncryption, Sink, Source,
    SqliteSource, StoreOptions, open_store,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often progress is reported while a table copies.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub(crate) fn report(code: ErrorCode, message: impl Into<String>, retryable: bool) -> ErrorReport {
    ErrorReport {
        code,
        message: message.into(),
        retryable,
    }
}

/// Reports a replication error under the side that failed: writing Parquet or objects is the
/// target's fault, everything else (opening, discovering, reading, decoding) the source's.
fn source_error(e: &tidegate_replicate::Error) -> ErrorReport {
    use tidegate_replicate::Error as E;
    let code = match e {
        E::Parquet { .. }
        | E::ObjectStore { .. }
        | E::Manifest { .. }
        | E::Write { .. }
        | E::RowCount { .. }
        | E::InvalidTarget { .. } => ErrorCode::Target,
        E::InvalidName { .. } | E::UnknownTable { .. } | E::InvalidConfig { .. } => {
            ErrorCode::InvalidRequest
        }
        _ => ErrorCode::Source,
    };
    report(code, e.to_string(), e.is_retryable())
}

/// Opens a source from its spec. Credentials are used here and dropped with the spec.
pub(crate) async fn open_source(spec: &ConnectionSpec) -> Result<Arc<dyn Source>, ErrorReport> {
    match spec.kind.as_str() {
        "sqlite" => {
            let path = setting(spec, "path")?;
            let source = SqliteSource::open(path)
                .await
                .map_err(|e| source_error(&e))?;
            Ok(Arc::new(source))
        }
        "postgres" => {
            let mut config = PostgresSourceConfig::default();
            if let Some(pages) = spec.settings.get("min_split_pages") {
                config.min_split_pages = pages.parse().map_err(|_| {
                    invalid(spec, "the setting \"min_split_pages\" is not a number")
                })?;
            }
            let source = PostgresSource::connect_with(postgres_options(spec)?, config)
                .await
                .map_err(|e| source_error(&e))?;
            Ok(Arc::new(source))
        }
        "odbc" => {
            let source = OdbcSource::connect(odbc_connection_string(spec)?)
                .await
                .map_err(|e| source_error(&e))?;
            Ok(Arc::new(source))
        }
        other => Err(report(
            ErrorCode::InvalidRequest,
            format!(
                "connection {}: {other:?} is not a source kind this gateway reads",
                spec.id
            ),
            false,
        )),
    }
}

/// Opens a sink from a target spec: Parquet on a directory or S3, or PostgreSQL tables.
pub(crate) async fn open_sink(spec: &ConnectionSpec) -> Result<Arc<dyn Sink>, ErrorReport> {
    if let Some((store, prefix)) = object_target(spec)? {
        return Ok(Arc::new(ParquetSink::new(
            store,
            prefix,
            parquet_config(spec)?,
        )));
    }
    match spec.kind.as_str() {
        "postgres" => {
            let mut config = PostgresSinkConfig::default();
            config.schema = spec.settings.get("schema").cloned();
            let sink = PostgresSink::connect_with(postgres_options(spec)?, config, 4)
                .await
                .map_err(|e| source_error(&e))?;
            Ok(Arc::new(sink))
        }
        other => Err(report(
            ErrorCode::InvalidRequest,
            format!(
                "connection {}: {other:?} is not a target kind this gateway writes",
                spec.id
            ),
            false,
        )),
    }
}

/// An object store and the prefix under it that a target writes to.
pub(crate) type ObjectTarget = (Arc<dyn ObjectStore>, StorePath);

/// The object store and prefix of an `s3` or `local` target; `None` for other kinds.
pub(crate) fn object_target(spec: &ConnectionSpec) -> Result<Option<ObjectTarget>, ErrorReport> {
    match spec.kind.as_str() {
        "s3" => {
            let bucket = setting(spec, "bucket")?;
            let prefix = spec.settings.get("prefix").map_or("", String::as_str);
            let mut options = StoreOptions::default();
            options.endpoint = spec.settings.get("endpoint").cloned();
            options.region = spec.settings.get("region").cloned();
            options.allow_http = spec.settings.get("allow_http").is_some_and(|v| v == "true");
            options.access_key_id = spec.settings.get("access_key_id").cloned();
            options.secret_access_key = spec
                .secrets
                .get("secret_access_key")
                .map(|secret| secret.expose().to_owned());
            options.encryption = match spec.settings.get("sse").map(String::as_str) {
                None | Some("") => ServerSideEncryption::BucketDefault,
                Some("aes256") => ServerSideEncryption::S3Managed,
                Some("kms") => ServerSideEncryption::Kms {
                    key_id: setting(spec, "kms_key_id")?.to_owned(),
                },
                Some(_) => {
                    return Err(invalid(spec, "the setting \"sse\" must be aes256 or kms"));
                }
            };
            let target = open_store(&format!("s3://{bucket}/{prefix}"), &options)
                .map_err(|e| source_error(&e))?;
            Ok(Some((target.store, target.prefix)))
        }
        "local" => {
            let root = setting(spec, "root")?;
            std::fs::create_dir_all(root).map_err(|e| {
                report(
                    ErrorCode::Target,
                    format!(
                        "connection {}: cannot create target directory: {e}",
                        spec.id
                    ),
                    false,
                )
            })?;
            let store = LocalFileSystem::new_with_prefix(root).map_err(|e| {
                report(
                    ErrorCode::Target,
                    format!("connection {}: {e}", spec.id),
                    false,
                )
            })?;
            let prefix = spec.settings.get("prefix").map_or("", String::as_str);
            if let Some(problem) = tidegate_proto::storage_prefix_problem(prefix) {
                return Err(invalid(spec, problem));
            }
            let prefix = StorePath::parse(prefix)
                .map_err(|_| invalid(spec, "the prefix is not a valid object path"))?;
            Ok(Some((Arc::new(store), prefix)))
        }
        _ => Ok(None),
    }
}

/// The Parquet settings of an object-storage target: with `encryption = tenant`, modular
/// encryption under the tenant's key, which the control plane hands over in the run's command
/// (secret `parquet_key`, base64; setting `parquet_key_id`) and which lives in memory only.
pub(crate) fn parquet_config(spec: &ConnectionSpec) -> Result<ParquetSinkConfig, ErrorReport> {
    use base64::Engine;
    match spec.settings.get("encryption").map(String::as_str) {
        None | Some("") => Ok(ParquetSinkConfig::default()),
        Some("tenant") => {
            let key = spec.secrets.get("parquet_key").ok_or_else(|| {
                invalid(
                    spec,
                    "encryption = tenant, but the control plane sent no tenant key",
                )
            })?;
            let key = zeroize::Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(key.expose())
                    .map_err(|_| invalid(spec, "the tenant key is not base64"))?,
            );
            let key_id = setting(spec, "parquet_key_id")?;
            ParquetSinkConfig::default()
                .with_modular_encryption(&key, key_id)
                .map_err(|e| invalid(spec, &e.to_string()))
        }
        Some(_) => Err(invalid(spec, "the setting \"encryption\" must be tenant")),
    }
}

pub(crate) fn invalid(spec: &ConnectionSpec, what: &str) -> ErrorReport {
    report(
        ErrorCode::InvalidRequest,
        format!("connection {}: {what}", spec.id),
        false,
    )
}

/// PostgreSQL connect options from a connection's settings (`host`, `port`, `database`,
/// `user`, `sslmode`, `ca_pem`) and secrets (`password`). No URL is built, so the password
/// never sits in a string that could be logged.
pub(crate) fn postgres_options(spec: &ConnectionSpec) -> Result<PgConnectOptions, ErrorReport> {
    let port = match spec.settings.get("port") {
        Some(port) => port
            .parse()
            .map_err(|_| invalid(spec, "the setting \"port\" is not a port number"))?,
        None => 5432,
    };
    let ssl_mode = match spec.settings.get("sslmode").map(String::as_str) {
        None | Some("prefer") => PgSslMode::Prefer,
        Some("disable") => PgSslMode::Disable,
        Some("require") => PgSslMode::Require,
        Some("verify-ca") => PgSslMode::VerifyCa,
        Some("verify-full") => PgSslMode::VerifyFull,
        Some(_) => {
            return Err(invalid(
                spec,
                "the setting \"sslmode\" must be disable, prefer, require, verify-ca or verify-full",
            ));
        }
    };
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(setting(spec, "host")?)
        .port(port)
        .database(setting(spec, "database")?)
        .username(setting(spec, "user")?)
        .ssl_mode(ssl_mode);
    if let Some(password) = spec.secrets.get("password") {
        options = options.password(password.expose());
    }
    if let Some(pem) = spec.settings.get("ca_pem") {
        options = options.ssl_root_cert_from_pem(pem.as_bytes().to_vec());
    }
    Ok(options)
}

/// The settings of an `odbc` connection that become connection string attributes, in order.
const ODBC_SETTINGS: &[(&str, &str)] = &[
    ("driver", "Driver"),
    ("server", "Server"),
    ("port", "Port"),
    ("database", "Database"),
    ("user", "UID"),
];

/// An ODBC connection string from a connection's settings (`driver`, and optionally `server`,
/// `port`, `database`, `user`) and secret `password`, each value braced as it needs; or, for
/// anything those cannot say (a DSN, driver options), the whole string from the secret
/// `connection_string` with none of those settings beside it.
fn odbc_connection_string(spec: &ConnectionSpec) -> Result<String, ErrorReport> {
    let given = |name: &str| spec.settings.get(name).filter(|v| !v.is_empty());
    if let Some(whole) = spec.secrets.get("connection_string") {
        if ODBC_SETTINGS.iter().any(|(name, _)| given(name).is_some())
            || spec.secrets.get("password").is_some()
        {
            return Err(invalid(
                spec,
                "an odbc connection takes either the secret \"connection_string\" or the \
                 settings driver, server, port, database, user and the secret \"password\", \
                 not both",
            ));
        }
        return Ok(whole.expose().to_owned());
    }
    setting(spec, "driver")?;
    let attribute_error = |_| invalid(spec, "an odbc setting name cannot be used as an attribute");
    let mut builder = ConnectionStringBuilder::new();
    for (name, key) in ODBC_SETTINGS {
        if let Some(value) = given(name) {
            builder = builder.attribute(key, value).map_err(attribute_error)?;
        }
    }
    if let Some(password) = spec.secrets.get("password") {
        builder = builder
            .attribute("PWD", password.expose())
            .map_err(attribute_error)?;
    }
    Ok(builder.finish())
}

pub(crate) fn setting<'a>(spec: &'a ConnectionSpec, name: &str) -> Result<&'a str, ErrorReport> {
    spec.settings
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            report(
                ErrorCode::InvalidRequest,
                format!("connection {} has no {name:?} setting", spec.id),
                false,
            )
        })
}

/// The connection kinds this gateway reads from.
const SOURCE_KINDS: &[&str] = &["sqlite", "postgres", "odbc"];

/// Tests a connection by opening it (and, for sources, listing its tables). A source's own
/// error is reported as such, never masked by trying the spec as a target.
pub(crate) async fn test_connection(spec: &ConnectionSpec) -> Result<CommandOutcome, ErrorReport> {
    if SOURCE_KINDS.contains(&spec.kind.as_str()) {
        let source = open_source(spec).await?;
        source.discover().await.map_err(|e| source_error(&e))?;
    } else {
        open_sink(spec).await?;
    }
    Ok(CommandOutcome::ConnectionOk { server: None })
}

/// Lists tables and columns of a source.
pub(crate) async fn discover(spec: &ConnectionSpec) -> Result<CommandOutcome, ErrorReport> {
    let source = open_source(spec).await?;
    let tables = source.discover().await.map_err(|e| source_error(&e))?;
    Ok(CommandOutcome::Schema(
        tables
            .into_iter()
            .map(|t| TableDescription {
                schema: t.table.schema.clone(),
                name: t.table.name.clone(),
                columns: t
                    .schema
                    .fields()
                    .iter()
                    .map(|f| ColumnDescription {
                        name: f.name().clone(),
                        data_type: f.data_type().to_string(),
                        nullable: f.is_nullable(),
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// Whether a table (`schema.name`) is selected: matched by an include (or includes are empty)
/// and by no exclude. Patterns match either `name` or `schema.name`.
pub(crate) fn selected(selection: &TableSelection, schema: &str, name: &str) -> bool {
    let qualified = format!("{schema}.{name}");
    let hit = |p: &String| glob(p, name) || glob(p, &qualified);
    (selection.include.is_empty() || selection.include.iter().any(hit))
        && !selection.exclude.iter().any(hit)
}

/// A run's change of state, as reported to the control plane.
pub(crate) fn status(spec: &TaskSpec, state: TaskState, error: Option<ErrorReport>) -> Message {
    Message::TaskStatus(TaskStatus {
        task_id: spec.task_id.clone(),
        run_id: spec.run_id.clone(),
        state,
        error,
    })
}

/// Runs a full load and reports its life cycle on `events`. Never panics on task errors: every
/// failure becomes a `Failed` status with a message that names objects, not values.
pub(crate) async fn run_full_load(
    spec: TaskSpec,
    events: mpsc::Sender<Message>,
    cancel: CancellationToken,
) -> (TaskState, u64, u64) {
    let status = |state, error| status(&spec, state, error);
    let _ = events.send(status(TaskState::Running, None)).await;
    let result = copy(&spec, &events, &cancel).await;
    let (state, error, rows, bytes) = match result {
        Ok((rows, bytes)) => (TaskState::Completed, None, rows, bytes),
        Err(e) if e.code == ErrorCode::Cancelled => (TaskState::Stopped, None, 0, 0),
        Err(e) => (TaskState::Failed, Some(e), 0, 0),
    };
    if let Some(e) = &error {
        tracing::warn!(message = "task failed", task = %spec.task_id, run = %spec.run_id, error = %e.message);
    } else {
        tracing::info!(message = "task ended", task = %spec.task_id, run = %spec.run_id, state = ?state, rows);
    }
    let _ = events.send(status(state, error)).await;
    (state, rows, bytes)
}

async fn copy(
    spec: &TaskSpec,
    events: &mpsc::Sender<Message>,
    cancel: &CancellationToken,
) -> Result<(u64, u64), ErrorReport> {
    let started = Instant::now();
    let source = open_source(&spec.source).await?;
    let sink = open_sink(&spec.target).await?;
    let discovered = source.discover().await.map_err(|e| source_error(&e))?;
    let tables: Vec<String> = discovered
        .iter()
        .filter(|t| selected(&spec.tables, &t.table.schema, &t.table.name))
        .map(|t| t.table.to_string())
        .filter(|name| !spec.completed_tables.contains(name))
        .collect();
    if tables.is_empty() {
        return Err(report(
            ErrorCode::InvalidRequest,
            "the table selection matches no table of the source",
            false,
        ));
    }
    let plan = CopyPlan::new(spec.run_id.clone()).with_tables(tables.clone());
    let (progress_tx, mut progress_rx) = mpsc::channel::<ProgressEvent>(256);
    let copy = tidegate_replicate::copy_tables(source, sink, plan, progress_tx, cancel.clone());
    tokio::pin!(copy);

    let mut state: BTreeMap<String, TableProgress> = tables
        .iter()
        .map(|t| {
            (
                t.clone(),
                TableProgress {
                    table: t.clone(),
                    rows: 0,
                    bytes: 0,
                    rows_expected: None,
                    state: TableState::Pending,
                },
            )
        })
        .collect();
    let mut changed: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let send_report = |state: &BTreeMap<String, TableProgress>, changed: &mut HashSet<String>| {
        let tables: Vec<TableProgress> = changed
            .drain()
            .filter_map(|t| state.get(&t).cloned())
            .collect();
        Message::Progress(ProgressReport {
            task_id: spec.task_id.clone(),
            run_id: spec.run_id.clone(),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            tables,
        })
    };
    let result = loop {
        tokio::select! {
            result = &mut copy => break result,
            Some(event) = progress_rx.recv() => apply(&mut state, &mut changed, &event),
            _ = ticker.tick() => {
                if !changed.is_empty() {
                    // Progress is advisory: drop a report rather than stall the copy.
                    let _ = events.try_send(send_report(&state, &mut changed));
                }
            }
        }
    };
    while let Ok(event) = progress_rx.try_recv() {
        apply(&mut state, &mut changed, &event);
    }
    match result {
        Ok(summary) => {
            for t in &summary.tables {
                let key = t.table.to_string();
                if let Some(p) = state.get_mut(&key) {
                    p.rows = t.rows;
                    p.bytes = t.bytes;
                    p.state = TableState::Done;
                    changed.insert(key);
                }
            }
            let _ = events.send(send_report(&state, &mut changed)).await;
            Ok((summary.total_rows(), summary.total_bytes()))
        }
        Err(e) => {
            for p in state.values_mut() {
                if p.state != TableState::Done {
                    p.state = TableState::Failed;
                    changed.insert(p.table.clone());
                }
            }
            let _ = events.send(send_report(&state, &mut changed)).await;
            if matches!(e, tidegate_replicate::Error::Cancelled) {
                Err(report(ErrorCode::Cancelled, "task stopped", true))
            } else {
                Err(source_error(&e))
            }
        }
    }
}

/// Folds one progress event into the per-table state and marks the table changed.
fn apply(
    state: &mut BTreeMap<String, TableProgress>,
    changed: &mut HashSet<String>,
    event: &ProgressEvent,
) {
    let key = event.table.to_string();
    if let Some(p) = state.get_mut(&key) {
        p.rows = event.rows;
        p.bytes = event.bytes;
        p.state = if event.done {
            TableState::Done
        } else {
            TableState::Copying
        };
        changed.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn odbc_spec(settings: &[(&str, &str)], secrets: &[(&str, &str)]) -> ConnectionSpec {
        let mut map = tidegate_proto::SecretMap::new();
        for (name, value) in secrets {
            map.insert(
                *name,
                tidegate_proto::SecretString::new((*value).to_owned()),
            );
        }
        ConnectionSpec {
            id: "conn-1".into(),
            kind: "odbc".into(),
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            secrets: map,
        }
    }

    #[test]
    fn odbc_connection_strings_come_from_settings_or_one_secret() {
        let spec = odbc_spec(
            &[
                ("driver", "PostgreSQL Unicode"),
                ("server", "db.internal"),
                ("port", "5432"),
                ("database", "shop"),
                ("user", "reader"),
            ],
            &[("password", "p;w}d")],
        );
        assert_eq!(
            odbc_connection_string(&spec).unwrap(),
            "Driver=PostgreSQL Unicode;Server=db.internal;Port=5432;Database=shop;UID=reader;\
             PWD={p;w}}d};"
        );

        let whole = "DSN=warehouse;UID=u;PWD=x;SSLmode=require";
        let spec = odbc_spec(&[], &[("connection_string", whole)]);
        assert_eq!(odbc_connection_string(&spec).unwrap(), whole);

        let both = odbc_spec(&[("driver", "d")], &[("connection_string", whole)]);
        let error = odbc_connection_string(&both).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(!error.message.contains("PWD=x"), "{}", error.message);

        let neither = odbc_spec(&[("server", "db")], &[]);
        assert!(
            odbc_connection_string(&neither).is_err(),
            "driver is required"
        );
    }

    #[test]
    fn table_selection_patterns() {
        let sel = |inc: &[&str], exc: &[&str]| TableSelection {
            include: inc.iter().map(|s| s.to_string()).collect(),
            exclude: exc.iter().map(|s| s.to_string()).collect(),
        };
        let cases = [
            (sel(&[], &[]), "orders", true),
            (sel(&["orders"], &[]), "orders", true),
            (sel(&["main.orders"], &[]), "orders", true),
            (sel(&["ord*"], &[]), "orders", true),
            (sel(&["*ers"], &[]), "orders", true),
            (sel(&["cust*"], &[]), "orders", false),
            (sel(&["*"], &["orders"]), "orders", false),
            (sel(&[], &["*"]), "orders", false),
            (sel(&["o*s"], &[]), "orders", true),
            (sel(&["o*x"], &[]), "orders", false),
        ];
        for (selection, table, want) in cases {
            assert_eq!(
                selected(&selection, "main", table),
                want,
                "{selection:?} {table}"
            );
        }
    }
}
