//! Object stores named by URL: where Parquet output lands.
//!
//! | URL                     | Store                                                     |
//! |-------------------------|-----------------------------------------------------------|
//! | `file:///abs/dir`       | the local filesystem under `/abs/dir` (created if missing) |
//! | `s3://bucket/prefix`    | Amazon S3 or any S3-compatible server (feature `aws`)     |
//! | `gs://bucket/prefix`    | Google Cloud Storage (feature `gcp`)                      |
//! | `az://container/prefix` | Azure Blob Storage (feature `azure`)                      |
//!
//! Cloud credentials, region and endpoint come from [`StoreOptions`] first, then from the
//! usual environment variables of each cloud (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, …).
//! Server-side encryption ([`ServerSideEncryption`]) is requested on every object written to
//! S3; the store does the encrypting, Tidegate never sees the keys.

use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::error::{Error, Result};

/// Server-side encryption requested for every object written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerSideEncryption {
    /// Whatever the bucket's default is.
    #[default]
    BucketDefault,
    /// SSE-S3: keys managed by the storage service (`AES256`).
    S3Managed,
    /// SSE-KMS with the given key id or ARN (`aws:kms`).
    Kms {
        /// The KMS key id or ARN.
        key_id: String,
    },
}

/// Options for opening an object store URL; unset fields fall back to the environment.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region, e.g. `eu-west-1`.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key; never shown by `Debug`.
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints (test servers on loopback).
    pub allow_http: bool,
    /// Server-side encryption of written objects.
    pub encryption: ServerSideEncryption,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("encryption", &self.encryption)
            .finish()
    }
}

/// An opened object store and the prefix the URL points at within it.
#[derive(Debug, Clone)]
pub struct StoreTarget {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix within the store (may be empty), to pass to [`ParquetSink::new`].
    ///
    /// [`ParquetSink::new`]: crate::ParquetSink::new
    pub prefix: Path,
}

/// Opens the object store a URL names: `file:///dir`, `s3://bucket/prefix`, and with their
/// features `gs://bucket/prefix` and `az://container/prefix`.
///
/// The prefix must be a clean relative path: `..` and `.` segments, empty segments and
/// backslashes are refused, so a configured prefix can never point outside its bucket or
/// directory.
pub fn open_store(url: &str, options: &StoreOptions) -> Result<StoreTarget> {
    let invalid = |reason: &'static str| Error::InvalidTarget {
        target: redact_url(url),
        reason,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected a URL such as file:///dir or s3://bucket/prefix"))?;
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(invalid("a file URL needs an absolute path (file:///dir)"));
        }
        check_prefix(rest.trim_start_matches('/')).map_err(invalid)?;
        std::fs::create_dir_all(rest).map_err(|_| invalid("cannot create the directory"))?;
        let store = LocalFileSystem::new_with_prefix(rest)
            .map_err(|_| invalid("cannot open the directory"))?;
        return Ok(StoreTarget {
            store: Arc::new(store),
            prefix: Path::default(),
        });
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("the URL names no bucket"));
    }
    let prefix = prefix.trim_end_matches('/');
    let prefix_path = check_prefix(prefix).map_err(invalid)?;
    let store = remote_store(scheme, bucket, url, options)?
        .ok_or_else(|| invalid("unsupported scheme (or its cargo feature is off)"))?;
    Ok(StoreTarget {
        store,
        prefix: prefix_path,
    })
}

/// The store of a remote scheme whose cargo feature is on, or `None`.
#[cfg_attr(
    not(any(feature = "aws", feature = "gcp", feature = "azure")),
    allow(unused_variables, unreachable_code)
)]
fn remote_store(
    scheme: &str,
    bucket: &str,
    url: &str,
    options: &StoreOptions,
) -> Result<Option<Arc<dyn ObjectStore>>> {
    let store: Arc<dyn ObjectStore> = match scheme {
        #[cfg(feature = "aws")]
        "s3" | "s3a" => Arc::new(s3(bucket, options).map_err(|source| Error::ObjectStore {
            path: redact_url(url),
            source,
        })?),
        #[cfg(feature = "gcp")]
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|source| Error::ObjectStore {
                    path: redact_url(url),
                    source,
                })?,
        ),
        #[cfg(feature = "azure")]
        "az" | "abfs" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .build()
                .map_err(|source| Error::ObjectStore {
                    path: redact_url(url),
                    source,
                })?,
        ),
        _ => return Ok(None),
    };
    Ok(Some(store))
}

#[cfg(feature = "aws")]
fn s3(bucket: &str, options: &StoreOptions) -> object_store::Result<object_store::aws::AmazonS3> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &options.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &options.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    builder = builder.with_allow_http(options.allow_http);
    builder = match &options.encryption {
        ServerSideEncryption::BucketDefault => builder,
        ServerSideEncryption::S3Managed => {
            // The key is public only through its string form.
            let key: AmazonS3ConfigKey = "aws_server_side_encryption".parse()?;
            builder.with_config(key, "AES256")
        }
        ServerSideEncryption::Kms { key_id } => builder.with_sse_kms_encryption(key_id),
    };
    builder.build()
}

/// Refuses prefixes that could escape their bucket or directory or that stores treat oddly
/// (the rule both ends share: [`tidegate_proto::storage_prefix_problem`]).
fn check_prefix(prefix: &str) -> std::result::Result<Path, &'static str> {
    if let Some(problem) = tidegate_proto::storage_prefix_problem(prefix) {
        return Err(problem);
    }
    // object_store's own rules (percent-encoded bytes and the like) as a last word.
    Path::parse(prefix).map_err(|_| "the prefix is not a valid object path")
}

/// The URL without anything between `://` and `@` (userinfo may hold credentials).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<redacted>@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_could_escape_are_refused() {
        for bad in ["a/../b", "..", "./a", "a//b", "a\\b", "a/\u{7}b"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
        for good in ["", "raw", "raw/2024/landing zone", "täglich"] {
            assert!(check_prefix(good).is_ok(), "{good:?}");
        }
        let error = open_store("s3://bucket/a/../../etc", &StoreOptions::default()).unwrap_err();
        assert!(matches!(error, Error::InvalidTarget { .. }), "{error}");
        assert!(open_store("ftp://host/x", &StoreOptions::default()).is_err());
        assert!(open_store("file://relative/x", &StoreOptions::default()).is_err());
    }

    #[test]
    fn credentials_in_urls_are_not_repeated() {
        let error = open_store("ftp://user:hunter2@host/x", &StoreOptions::default()).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let options = StoreOptions {
            secret_access_key: Some("hunter2".into()),
            ..StoreOptions::default()
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
