//! Parquet modular encryption for managed storage: files written with a tenant's key read only
//! with that key.

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::encryption::decrypt::FileDecryptionProperties;
use tidegate_replicate::sample::{SampleSize, generate_sqlite};
use tidegate_replicate::{
    CancellationToken, CopyPlan, Error, ParquetSink, ParquetSinkConfig, SqliteSource, copy_tables,
};

const KEY: &[u8; 32] = b"tenant-a-key-0123456789abcdef012";

fn rows_with(path: &std::path::Path, key: Option<&[u8]>) -> parquet::errors::Result<usize> {
    let file = std::fs::File::open(path).unwrap();
    let mut options = ArrowReaderOptions::new();
    if let Some(key) = key {
        options = options.with_file_decryption_properties(
            FileDecryptionProperties::builder(key.to_vec()).build()?,
        );
    }
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?.build()?;
    let mut rows = 0;
    for batch in reader {
        rows += batch?.num_rows();
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_files_read_only_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    generate_sqlite(&db, SampleSize::rows(2000)).await.unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(&out).unwrap());
    let config = ParquetSinkConfig::default()
        .with_modular_encryption(KEY, "tenant-a/v1")
        .unwrap();
    assert!(
        !format!("{config:?}").contains("tenant-a-key"),
        "the key is not in Debug"
    );
    let sink = Arc::new(ParquetSink::new(store, "managed".into(), config));
    let source = Arc::new(SqliteSource::open(&db).await.unwrap());
    let (progress, mut events) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let summary = copy_tables(
        source,
        sink,
        CopyPlan::new("r1"),
        progress,
        CancellationToken::new(),
    )
    .await
    .unwrap();

    let mut checked = 0;
    for table in &summary.tables {
        for file in &table.files {
            let path = out.join(&file.path);
            assert_eq!(rows_with(&path, Some(KEY)).unwrap() as u64, file.rows);
            assert!(rows_with(&path, None).is_err(), "read without a key");
            let wrong = b"tenant-b-key-0123456789abcdef012";
            assert!(
                rows_with(&path, Some(wrong)).is_err(),
                "read with another key"
            );
            // The key itself is nowhere in the file.
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(KEY.len()).any(|w| w == KEY));
            checked += 1;
        }
    }
    assert!(checked >= 3, "every table wrote a file");

    let error = ParquetSinkConfig::default()
        .with_modular_encryption(b"short", "k")
        .unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { .. }));
}
