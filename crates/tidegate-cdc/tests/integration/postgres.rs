//! Change data capture against a real PostgreSQL started for each test: the exported
//! snapshot meets the stream without gap or overlap, every operation and type decodes, replica
//! identities, unchanged TOAST values, streamed transactions in bounded batches, the idle
//! flush advance, restarts from an acknowledged position, and the errors people meet.

use std::time::Duration;

use tidegate_cdc::arrow::array::{
    Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use tidegate_cdc::arrow::datatypes::{
    Decimal128Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt16Type,
};
use tidegate_cdc::sqlx::{self, Connection, PgConnection};
use tidegate_cdc::{
    BatchConfig, ChangeEvent, ChangeStream, ConnectConfig, Error, Lsn, PublicationTables,
    ReplicationClient, StreamOptions, TableRef, UNCHANGED_COLUMN, create_publication, slot_info,
};
use tidegate_testkit::PgServer;

const WAIT: Duration = Duration::from_secs(30);

async fn server_with(sql: &str) -> PgServer {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    server.create_database("src").unwrap();
    server.execute("src", sql).unwrap();
    server
}

fn connect_config(server: &PgServer) -> ConnectConfig {
    ConnectConfig::from_url(&format!("{}?sslmode=disable", server.url("src"))).unwrap()
}

async fn sql_connection(server: &PgServer) -> PgConnection {
    PgConnection::connect(&server.url("src")).await.unwrap()
}

async fn publish(server: &PgServer, name: &str, tables: &[&str]) {
    let mut connection = sql_connection(server).await;
    let tables = tables
        .iter()
        .map(|table| TableRef::new("public", *table))
        .collect();
    create_publication(&mut connection, name, &PublicationTables::Tables(tables))
        .await
        .unwrap();
}

/// A slot without snapshot, and a stream on it for `publication`.
async fn stream(
    server: &PgServer,
    slot: &str,
    publication: &str,
    batch: BatchConfig,
) -> ChangeStream {
    let config = connect_config(server);
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    let created = client.create_slot(slot, false).await.unwrap();
    let options = StreamOptions::new(slot, vec![publication.into()], created.consistent_point);
    ChangeStream::start_on(client, &config, options, batch)
        .await
        .unwrap()
}

/// Events until `done` says so (inclusive), failing after 30 s.
async fn events_until(
    stream: &mut ChangeStream,
    mut done: impl FnMut(&ChangeEvent) -> bool,
) -> Vec<ChangeEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let event = stream.next().await.unwrap().expect("the stream ended");
            let stop = done(&event);
            events.push(event);
            if stop {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no end after {} events: {events:?}", events.len()));
    events
}

/// Events until `count` commits have been seen.
async fn commits(stream: &mut ChangeStream, count: usize) -> Vec<ChangeEvent> {
    let mut seen = 0;
    events_until(stream, |event| {
        if matches!(event, ChangeEvent::Commit { .. }) {
            seen += 1;
        }
        seen == count
    })
    .await
}

fn batches(events: &[ChangeEvent]) -> Vec<&RecordBatch> {
    events
        .iter()
        .filter_map(|event| match event {
            ChangeEvent::Changes(batch) => Some(&batch.batch),
            _ => None,
        })
        .collect()
}

/// (operation, int4 column `column`) of every row of every batch of `table`.
fn ops_and_ids(events: &[ChangeEvent], table: &str, column: &str) -> Vec<(String, Option<i32>)> {
    let mut rows = Vec::new();
    for event in events {
        let ChangeEvent::Changes(batch) = event else {
            continue;
        };
        if batch.relation.table.name != table {
            continue;
        }
        let ops = batch
            .batch
            .column_by_name("_tg_op")
            .unwrap()
            .as_string::<i32>();
        let ids = batch
            .batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Int32Type>();
        for row in 0..batch.batch.num_rows() {
            rows.push((
                ops.value(row).to_owned(),
                ids.is_valid(row).then(|| ids.value(row)),
            ));
        }
    }
    rows
}

fn commit_end(events: &[ChangeEvent]) -> Lsn {
    events
        .iter()
        .rev()
        .find_map(|event| match event {
            ChangeEvent::Commit { end_lsn, .. } => Some(*end_lsn),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_snapshot_and_stream_meet_without_gap_or_overlap() {
    let server = server_with(
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         INSERT INTO t SELECT i, 'before' FROM generate_series(1, 3) i;",
    )
    .await;
    publish(&server, "pub", &["t"]).await;
    let config = connect_config(&server);
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    let system = client.identify_system().await.unwrap();
    assert!(system.timeline >= 1);
    assert_eq!(system.database.as_deref(), Some("src"));
    let (slot, snapshot) = client
        .create_slot_exporting_snapshot("load", false)
        .await
        .unwrap();
    assert_eq!(slot.output_plugin, "pgoutput");
    assert_eq!(snapshot.consistent_point(), slot.consistent_point);

    // Committed after the slot: not in the snapshot, in the stream.
    server
        .execute(
            "src",
            "INSERT INTO t VALUES (4, 'after'); UPDATE t SET note = 'after' WHERE id = 1;",
        )
        .unwrap();

    let mut reader = sql_connection(&server).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
        snapshot.name()
    )))
    .execute(&mut reader)
    .await
    .unwrap();
    let loaded: Vec<(i32, String)> = sqlx::query_as("SELECT id, note FROM t ORDER BY id")
        .fetch_all(&mut reader)
        .await
        .unwrap();
    assert_eq!(
        loaded,
        [
            (1, "before".into()),
            (2, "before".into()),
            (3, "before".into())
        ]
    );
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();

    let client = snapshot.release();
    let options = StreamOptions::new("load", vec!["pub".into()], slot.consistent_point);
    let mut changes = ChangeStream::start_on(client, &config, options, BatchConfig::default())
        .await
        .unwrap();
    let events = commits(&mut changes, 2).await;
    assert_eq!(
        ops_and_ids(&events, "t", "id"),
        [("insert".into(), Some(4)), ("update".into(), Some(1))]
    );
    let first = events
        .iter()
        .find(|event| !matches!(event, ChangeEvent::Keepalive { .. }));
    assert!(
        matches!(first, Some(ChangeEvent::Begin { .. })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|event| matches!(event, ChangeEvent::Relation { previous: None, .. })),
        "the table is described first"
    );
    changes.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_and_type_decodes() {
    let server = server_with(
        "CREATE TABLE typed (
             id int PRIMARY KEY, big bigint, label text, amount numeric(12, 2),
             at timestamptz, local timestamp, raw bytea, doc json, docb jsonb, missing int
         );",
    )
    .await;
    publish(&server, "pub", &["typed"]).await;
    let mut changes = stream(&server, "typed_slot", "pub", BatchConfig::default()).await;
    assert!(changes.binary(), "all these types decode from binary form");
    server
        .execute(
            "src",
            "INSERT INTO typed VALUES (1, 9007199254740993, 'héllo', 12345.67,
                 '2024-02-29 12:34:56.789012+00', '1999-12-31 23:59:59', '\\x00ff10',
                 '{\"a\": [1, 2]}', '{\"b\": true}', NULL);
             UPDATE typed SET label = 'changed', amount = -0.01 WHERE id = 1;
             DELETE FROM typed WHERE id = 1;
             TRUNCATE typed;",
        )
        .unwrap();
    let events = commits(&mut changes, 4).await;
    let rows = ops_and_ids(&events, "typed", "id");
    assert_eq!(
        rows,
        [
            ("insert".into(), Some(1)),
            ("update".into(), Some(1)),
            ("delete".into(), None),
            ("truncate".into(), None),
        ]
    );
    let batches = batches(&events);
    let insert = batches[0];
    let column = |name: &str| insert.column_by_name(name).unwrap().clone();
    assert_eq!(
        column("big").as_primitive::<Int64Type>().value(0),
        9_007_199_254_740_993
    );
    assert_eq!(column("label").as_string::<i32>().value(0), "héllo");
    let amount = column("amount");
    assert_eq!(amount.as_primitive::<Decimal128Type>().value(0), 1_234_567);
    let at = column("at");
    let at = at.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(at.value(0), 1_709_210_096_789_012);
    let local = column("local");
    let local: &TimestampMicrosecondArray = local.as_primitive();
    assert_eq!(local.value(0), 946_684_799_000_000);
    assert_eq!(
        column("raw").as_binary::<i32>().value(0),
        [0x00, 0xff, 0x10]
    );
    assert_eq!(column("doc").as_string::<i32>().value(0), "{\"a\": [1, 2]}");
    assert_eq!(column("docb").as_string::<i32>().value(0), "{\"b\": true}");
    assert!(column("missing").is_null(0));
    // Metadata: the commit time is the transaction's, the LSN the change's.
    let commit_ts = insert.column_by_name("_tg_commit_ts").unwrap();
    assert!(commit_ts.is_valid(0));
    let lsn = insert.column_by_name("_tg_lsn").unwrap();
    assert!(
        lsn.as_primitive::<tidegate_cdc::arrow::datatypes::UInt64Type>()
            .value(0)
            > 0
    );

    let update = batches[1];
    assert_eq!(
        update
            .column_by_name("label")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "changed"
    );
    assert_eq!(
        update
            .column_by_name("amount")
            .unwrap()
            .as_primitive::<Decimal128Type>()
            .value(0),
        -1
    );
    // The delete carries the old key (REPLICA IDENTITY DEFAULT: the primary key).
    let delete = batches[2];
    assert_eq!(
        delete
            .column_by_name("_tg_old_id")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        1
    );
    changes.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_default_and_full() {
    let server = server_with(
        "CREATE TABLE keyed (id int PRIMARY KEY, note text);
         CREATE TABLE full_row (id int PRIMARY KEY, note text);
         ALTER TABLE full_row REPLICA IDENTITY FULL;
         INSERT INTO keyed VALUES (1, 'a');
         INSERT INTO full_row VALUES (1, 'a');",
    )
    .await;
    publish(&server, "pub", &["keyed", "full_row"]).await;
    let mut changes = stream(&server, "identity", "pub", BatchConfig::default()).await;
    server
        .execute(
            "src",
            "UPDATE keyed SET note = 'b' WHERE id = 1;
             UPDATE keyed SET id = 2 WHERE id = 1;
             UPDATE full_row SET note = 'b' WHERE id = 1;",
        )
        .unwrap();
    let events = commits(&mut changes, 3).await;
    let schema_of = |table: &str| {
        events
            .iter()
            .find_map(|event| match event {
                ChangeEvent::Relation { schema, .. } if schema.table.name == table => {
                    Some(schema.clone())
                }
                _ => None,
            })
            .unwrap()
    };
    let keyed = schema_of("keyed");
    assert_eq!(keyed.old_columns, [0], "only the key");
    assert!(keyed.schema.field_with_name("_tg_old_note").is_err());
    let full = schema_of("full_row");
    assert_eq!(full.old_columns, [0, 1], "the whole row");

    let batches = batches(&events);
    let old_id = |batch: &RecordBatch| {
        let old = batch
            .column_by_name("_tg_old_id")
            .unwrap()
            .as_primitive::<Int32Type>();
        old.is_valid(0).then(|| old.value(0))
    };
    assert_eq!(old_id(batches[0]), None, "key unchanged: no old key sent");
    assert_eq!(old_id(batches[1]), Some(1), "key changed: old key sent");
    assert_eq!(old_id(batches[2]), Some(1));
    let old_note: &StringArray = batches[2]
        .column_by_name("_tg_old_note")
        .unwrap()
        .as_string();
    assert_eq!(old_note.value(0), "a", "FULL sends the old row");
    changes.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_toasted_value_is_marked_unchanged_not_null() {
    let server = server_with(
        "CREATE TABLE docs (id int PRIMARY KEY, body text, counter int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await;
    publish(&server, "pub", &["docs"]).await;
    let mut changes = stream(&server, "toast", "pub", BatchConfig::default()).await;
    server
        .execute(
            "src",
            "INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 0 FROM generate_series(1, 400) i;
             UPDATE docs SET counter = 1 WHERE id = 1;
             UPDATE docs SET body = 'short now', counter = 2 WHERE id = 1;",
        )
        .unwrap();
    let events = commits(&mut changes, 3).await;
    let batches = batches(&events);
    let body = |batch: &RecordBatch| {
        batch
            .column_by_name("body")
            .unwrap()
            .as_string::<i32>()
            .clone()
    };
    let unchanged = |batch: &RecordBatch| -> Vec<u16> {
        let list = batch
            .column_by_name(UNCHANGED_COLUMN)
            .unwrap()
            .as_list::<i32>();
        list.value(0).as_primitive::<UInt16Type>().values().to_vec()
    };
    assert_eq!(
        body(batches[0]).value(0).len(),
        12_800,
        "the insert carries the value"
    );
    assert_eq!(unchanged(batches[0]), Vec::<u16>::new());
    // The update that did not touch it: null in the column, and listed as unchanged.
    assert!(body(batches[1]).is_null(0));
    assert_eq!(unchanged(batches[1]), [1], "column 1 (body) is unchanged");
    assert_eq!(body(batches[2]).value(0), "short now");
    assert_eq!(unchanged(batches[2]), Vec::<u16>::new());
    changes.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_streams_in_bounded_batches() {
    let server = server_with(
        "CREATE TABLE wide (id int PRIMARY KEY, pad text);
         ALTER SYSTEM SET logical_decoding_work_mem = '64kB';
         SELECT pg_reload_conf();",
    )
    .await;
    publish(&server, "pub", &["wide"]).await;
    let batch = BatchConfig::default().with_batch_rows(500);
    let mut changes = stream(&server, "large", "pub", batch).await;
    server
        .execute(
            "src",
            "INSERT INTO wide SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 5000) i;",
        )
        .unwrap();
    let events = commits(&mut changes, 1).await;
    assert!(
        events
            .iter()
            .any(|event| matches!(event, ChangeEvent::StreamStart { .. })),
        "the server streamed the transaction before its commit"
    );
    assert!(matches!(
        events.last(),
        Some(ChangeEvent::Commit { streamed: true, .. })
    ));
    let mut ids: Vec<i32> = Vec::new();
    for event in &events {
        if let ChangeEvent::Changes(batch) = event {
            assert!(batch.streamed && batch.commit_lsn.is_none());
            assert!(
                batch.batch.num_rows() <= 500,
                "{} rows",
                batch.batch.num_rows()
            );
            let column = batch
                .batch
                .column_by_name("id")
                .unwrap()
                .as_primitive::<Int32Type>();
            ids.extend(column.values().iter());
            let pad = batch
                .batch
                .column_by_name("pad")
                .unwrap()
                .as_string::<i32>();
            assert!(pad.iter().all(|value| value.is_some_and(|v| v.len() == 96)));
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=5000).collect::<Vec<_>>());
    changes.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_publication_lets_the_flush_position_advance() {
    let server = server_with(
        "CREATE TABLE watched (id int PRIMARY KEY);
         CREATE TABLE busy (id int PRIMARY KEY, pad text);",
    )
    .await;
    publish(&server, "pub", &["watched"]).await;
    let mut changes = stream(&server, "quiet", "pub", BatchConfig::default()).await;
    let mut catalog = sql_connection(&server).await;
    let start = slot_info(&mut catalog, "quiet")
        .await
        .unwrap()
        .unwrap()
        .confirmed_flush_lsn
        .unwrap();
    server
        .execute(
            "src",
            "INSERT INTO busy SELECT i, repeat('x', 200) FROM generate_series(1, 2000) i;
             UPDATE busy SET pad = 'y';",
        )
        .unwrap();
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut catalog)
        .await
        .unwrap();
    let target: Lsn = target.parse().unwrap();
    assert!(target > start);

    // Without the caller's word, nothing moves.
    changes.acknowledge_idle();
    let advanced = tokio::time::timeout(WAIT, async {
        loop {
            let event = tokio::time::timeout(Duration::from_millis(500), changes.next()).await;
            if let Ok(event) = event {
                let event = event.unwrap().unwrap();
                assert!(
                    matches!(event, ChangeEvent::Keepalive { .. }),
                    "nothing of the unrelated table is sent: {event:?}"
                );
            }
            let flushed = slot_info(&mut catalog, "quiet")
                .await
                .unwrap()
                .unwrap()
                .confirmed_flush_lsn
                .unwrap();
            if flushed >= target {
                return flushed;
            }
        }
    })
    .await
    .expect("confirmed_flush_lsn did not advance past the unrelated changes");
    assert!(advanced >= target);
    changes.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acknowledgement_the_slot_does_not_advance() {
    let server = server_with("CREATE TABLE t (id int PRIMARY KEY);").await;
    publish(&server, "pub", &["t"]).await;
    let mut changes = stream(&server, "held", "pub", BatchConfig::default()).await;
    let mut catalog = sql_connection(&server).await;
    let start = slot_info(&mut catalog, "held")
        .await
        .unwrap()
        .unwrap()
        .confirmed_flush_lsn;
    server.execute("src", "INSERT INTO t VALUES (1);").unwrap();
    commits(&mut changes, 1).await;
    // Keepalives and status updates go on, but report only what the caller said.
    changes.send_status().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), changes.next()).await;
    changes.send_status().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = slot_info(&mut catalog, "held")
        .await
        .unwrap()
        .unwrap()
        .confirmed_flush_lsn;
    assert_eq!(now, start);
    changes.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_acknowledged_position_loses_and_repeats_nothing() {
    let server = server_with("CREATE TABLE t (id int PRIMARY KEY);").await;
    publish(&server, "pub", &["t"]).await;
    let config = connect_config(&server);
    let mut changes = stream(&server, "restart", "pub", BatchConfig::default()).await;
    server
        .execute(
            "src",
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);",
        )
        .unwrap();
    let first = commits(&mut changes, 2).await;
    assert_eq!(
        ops_and_ids(&first, "t", "id"),
        [("insert".into(), Some(1)), ("insert".into(), Some(2))]
    );
    // Only the first two are durable at the target; the third was received, not applied.
    let acknowledged = commit_end(&first);
    changes.acknowledge(acknowledged);
    let third = commits(&mut changes, 1).await;
    assert_eq!(ops_and_ids(&third, "t", "id"), [("insert".into(), Some(3))]);
    changes.close().await.unwrap();

    server.execute("src", "INSERT INTO t VALUES (4);").unwrap();
    let options = StreamOptions::new("restart", vec!["pub".into()], acknowledged);
    let mut again = ChangeStream::start(&config, options, BatchConfig::default())
        .await
        .unwrap();
    let events = commits(&mut again, 2).await;
    assert_eq!(
        ops_and_ids(&events, "t", "id"),
        [("insert".into(), Some(3)), ("insert".into(), Some(4))]
    );
    again.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_a_clear_error() {
    let server = server_with("CREATE TABLE t (id int PRIMARY KEY);").await;
    publish(&server, "pub", &["t"]).await;
    let config = connect_config(&server);
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    client.create_slot("gone", false).await.unwrap();
    client.drop_slot("gone", false).await.unwrap();
    let again = client.drop_slot("gone", false).await.unwrap_err();
    assert!(
        matches!(&again, Error::SlotNotFound { slot, .. } if slot == "gone"),
        "{again:?}"
    );

    let options = StreamOptions::new("gone", vec!["pub".into()], Lsn::ZERO);
    let error = ChangeStream::start(&config, options, BatchConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::SlotNotFound { slot, .. } if slot == "gone"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("\"gone\" does not exist"),
        "{error}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_without_echoing_it() {
    let server = server_with("SELECT 1;").await;
    let wrong = "not-the-Password-4711";
    let config = connect_config(&server).with_password(wrong);
    let error = ReplicationClient::connect(&config).await.unwrap_err();
    assert!(matches!(error, Error::Authentication { .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(shown.contains("password authentication failed"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_cleartext_passwords_authenticate() {
    let server = server_with(
        "SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE plain_user LOGIN REPLICATION PASSWORD 'plain-secret';",
    )
    .await;
    let hba = server.execute("src", "SHOW hba_file").unwrap();
    let hba = hba.trim();
    let rules = std::fs::read_to_string(hba).unwrap();
    std::fs::write(
        hba,
        format!(
            "host all md5_user 127.0.0.1/32 md5\nhost replication md5_user 127.0.0.1/32 md5\n\
             host all plain_user 127.0.0.1/32 password\nhost replication plain_user 127.0.0.1/32 password\n{rules}"
        ),
    )
    .unwrap();
    server.execute("src", "SELECT pg_reload_conf()").unwrap();
    for (user, password) in [("md5_user", "md5-secret"), ("plain_user", "plain-secret")] {
        let url = format!(
            "postgres://{user}:{password}@127.0.0.1:{}/src?sslmode=disable",
            server.port()
        );
        let config = ConnectConfig::from_url(&url).unwrap();
        let mut client = ReplicationClient::connect(&config).await.unwrap();
        client.identify_system().await.unwrap();
        client.close().await;
        let error = ReplicationClient::connect(&config.with_password("wrong-secret"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Authentication { .. }),
            "{user}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_required_only_when_asked_for() {
    let server = server_with("SELECT 1;").await;
    // The test server has no certificate: `prefer` falls back to plain TCP…
    let prefer = ConnectConfig::from_url(&format!("{}?sslmode=prefer", server.url("src"))).unwrap();
    ReplicationClient::connect(&prefer)
        .await
        .unwrap()
        .close()
        .await;
    // …and `require` refuses to go on without TLS.
    let require =
        ConnectConfig::from_url(&format!("{}?sslmode=require", server.url("src"))).unwrap();
    let error = ReplicationClient::connect(&require).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
}

/// Turns TLS on in `server` with a certificate for `names`, signed by a throwaway CA whose
/// PEM file is returned.
fn enable_tls(server: &PgServer, names: &[&str]) -> tempfile::TempPath {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cdc test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let data = server.execute("src", "SHOW data_directory").unwrap();
    let data = std::path::Path::new(data.trim());
    std::fs::write(data.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(data.join("server.key"), key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // The server runs as `postgres` when the tests run as root.
    let _ = std::process::Command::new("chown")
        .arg("postgres:")
        .arg(data.join("server.crt"))
        .arg(data.join("server.key"))
        .output();
    server
        .execute(
            "src",
            "ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();",
        )
        .unwrap();
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut ca_file, ca.pem().as_bytes()).unwrap();
    ca_file.into_temp_path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_check_what_they_promise() {
    let server = server_with("SELECT 1;").await;
    let ca = enable_tls(&server, &["localhost"]);
    let url = |host: &str, mode: &str| {
        format!(
            "postgres://{}:{}@{host}:{}/src?sslmode={mode}&sslrootcert={}",
            server.user(),
            server.password(),
            server.port(),
            ca.display()
        )
    };
    // The server's TLS comes up with the reload; give it a moment.
    let mut ok = None;
    for _ in 0..50 {
        let config = ConnectConfig::from_url(&url("localhost", "verify-full")).unwrap();
        match ReplicationClient::connect(&config).await {
            Ok(client) => {
                ok = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut client = ok.expect("verify-full against the right CA and name connects");
    client.identify_system().await.unwrap();
    client.close().await;
    for mode in ["require", "verify-ca"] {
        let config = ConnectConfig::from_url(&url("127.0.0.1", mode)).unwrap();
        let mut client = ReplicationClient::connect(&config).await.unwrap();
        client.identify_system().await.unwrap();
        client.close().await;
    }
    // The certificate names localhost, not 127.0.0.1: only verify-full minds.
    let config = ConnectConfig::from_url(&url("127.0.0.1", "verify-full")).unwrap();
    let error = ReplicationClient::connect(&config).await.unwrap_err();
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    // The ordinary connection takes the same settings.
    let config = ConnectConfig::from_url(&url("localhost", "verify-full")).unwrap();
    let mut connection = sqlx::ConnectOptions::connect(&config.sqlx_options())
        .await
        .unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_table_starts_a_new_schema_version() {
    let server = server_with("CREATE TABLE t (id int PRIMARY KEY, a text);").await;
    publish(&server, "pub", &["t"]).await;
    let mut changes = stream(&server, "ddl", "pub", BatchConfig::default()).await;
    server
        .execute(
            "src",
            "INSERT INTO t VALUES (1, 'x');
             ALTER TABLE t ADD COLUMN b int, DROP COLUMN a;
             INSERT INTO t VALUES (2, 7);",
        )
        .unwrap();
    let events = commits(&mut changes, 2).await;
    let versions: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            ChangeEvent::Relation { schema, previous } => Some((schema.clone(), previous.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(versions.len(), 2, "{events:?}");
    let (second, previous) = &versions[1];
    assert_eq!(second.version, 2);
    let diff = second.diff(previous.as_ref().unwrap());
    assert_eq!(diff.added, ["b"]);
    assert_eq!(diff.dropped, ["a"]);
    let batches = batches(&events);
    assert!(batches[0].column_by_name("a").is_some());
    assert!(batches[1].column_by_name("a").is_none());
    assert_eq!(
        batches[1]
            .column_by_name("b")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        7
    );
    changes.close().await.unwrap();
}
