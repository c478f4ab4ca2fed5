//! Parquet on a real S3-compatible server (moto, started on loopback): server-side encryption
//! passed through and checked on every stored object, the data read back through S3, and a
//! missing bucket refused with an error naming the target.

use std::sync::Arc;

use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tidegate_replicate::sample::{SampleSize, generate_sqlite};
use tidegate_replicate::{
    CancellationToken, CopyPlan, CopySummary, ParquetSink, ParquetSinkConfig, ServerSideEncryption,
    SqliteSource, StoreOptions, copy_tables, open_store,
};
use tidegate_testkit::S3Server;

fn options(server: &S3Server, encryption: ServerSideEncryption) -> StoreOptions {
    let mut options = StoreOptions::default();
    options.endpoint = Some(server.endpoint());
    options.region = Some("us-east-1".into());
    options.access_key_id = Some("test-key".into());
    options.secret_access_key = Some("test-secret".into());
    options.allow_http = true;
    options.encryption = encryption;
    options
}

async fn copy_to(
    url: &str,
    options: &StoreOptions,
    db: &std::path::Path,
) -> tidegate_replicate::Result<CopySummary> {
    let target = open_store(url, options)?;
    let source = Arc::new(SqliteSource::open(db).await?);
    let config = ParquetSinkConfig::default().with_max_file_rows(std::num::NonZeroU64::new(700));
    let sink = Arc::new(ParquetSink::new(target.store, target.prefix, config));
    let (progress, mut events) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    copy_tables(
        source,
        sink,
        CopyPlan::new("run-1"),
        progress,
        CancellationToken::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_lands_on_s3_with_server_side_encryption() {
    let server = tokio::task::spawn_blocking(S3Server::start)
        .await
        .unwrap()
        .unwrap();
    server.create_bucket("landing").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    generate_sqlite(&db, SampleSize::rows(3000)).await.unwrap();

    let cases = [
        (
            "s3://landing/kms",
            ServerSideEncryption::Kms {
                key_id: "alias/tidegate-test".into(),
            },
            "aws:kms",
        ),
        (
            "s3://landing/sse-s3",
            ServerSideEncryption::S3Managed,
            "AES256",
        ),
    ];
    for (url, encryption, algorithm) in cases {
        let options = options(&server, encryption.clone());
        let summary = copy_to(url, &options, &db).await.unwrap();
        assert_eq!(summary.total_rows(), 3000);

        let target = open_store(url, &options).unwrap();
        for table in &summary.tables {
            let mut keys: Vec<String> = table.files.iter().map(|f| f.path.clone()).collect();
            assert!(
                table.files.len() > 1 || table.rows <= 700,
                "parts roll over"
            );
            keys.push(table.manifest.clone());
            for key in &keys {
                let (stored, key_id) = server.object_encryption("landing", key).unwrap();
                assert_eq!(stored.as_deref(), Some(algorithm), "{key}");
                if let ServerSideEncryption::Kms { key_id: wanted } = &encryption {
                    assert_eq!(key_id.as_deref(), Some(wanted.as_str()), "{key}");
                }
            }
            // Read the data back through S3 and count it.
            let mut rows = 0;
            for file in &table.files {
                let path = Path::parse(&file.path).unwrap();
                let bytes = target
                    .store
                    .get(&path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let batches: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            }
            assert_eq!(rows, table.rows, "{}", table.table);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_fails_naming_the_target() {
    let server = tokio::task::spawn_blocking(S3Server::start)
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    generate_sqlite(&db, SampleSize::rows(100)).await.unwrap();
    let options = options(&server, ServerSideEncryption::BucketDefault);
    let error = copy_to("s3://no-such-bucket/x", &options, &db)
        .await
        .unwrap_err();
    let chain = error_chain(&error);
    assert!(
        chain.contains("no-such-bucket") || chain.contains("x/main"),
        "{chain}"
    );
    assert!(!chain.contains("test-secret"), "{chain}");
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
