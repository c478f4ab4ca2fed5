//! The tenant's Parquet key, for managed storage: targets with the setting
//! `encryption = tenant` are written with Parquet modular encryption under it.
//!
//! The key is made once per tenant (32 random bytes), sealed under the tenant's data key like a
//! connection secret (object id `parquet-key:<tenant>`), and kept as a tenant setting; control
//! planes sharing a database agree on the first one stored. It leaves the control plane only in
//! the sealed command that starts a run, as the target's secret `parquet_key` (with its id in
//! the setting `parquet_key_id`); the gateway holds it in memory for the run. Rotating the
//! tenant's data keys reseals it without changing it, so files written before stay readable.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tidegate_metadata::MetadataStore;
use tidegate_proto::SecretString;
use zeroize::Zeroizing;

use crate::Shared;
use crate::api::ApiError;

/// The tenant setting that holds the sealed key.
const SETTING: &str = "parquet_key";

/// What the setting holds: the key's id and the key, sealed.
#[derive(Serialize, Deserialize)]
struct Stored {
    key_id: String,
    sealed: String,
}

/// A tenant's Parquet key and its id (recorded in each file's footer key metadata).
pub struct ParquetKey {
    /// The id written into the files, naming the tenant and the key's generation.
    pub key_id: String,
    /// The 32 key bytes; zeroized on drop.
    pub key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ParquetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn parquet_key_object(&self) -> String {
        format!("parquet-key:{}", self.tenant_id)
    }

    /// The tenant's Parquet key, made and stored on first use.
    pub(crate) async fn tenant_parquet_key(&self) -> Result<ParquetKey, ApiError> {
        let object = self.parquet_key_object();
        let stored = match self.store.tenant_setting(&self.tenant_id, SETTING).await? {
            Some(value) => value,
            None => {
                let mut key = Zeroizing::new(vec![0u8; 32]);
                getrandom::fill(&mut key).map_err(|_| {
                    ApiError::internal("no randomness for the tenant's Parquet key")
                })?;
                let sealed = self
                    .keyring
                    .seal(&object, &key)
                    .map_err(|e| ApiError::internal(format!("sealing the Parquet key: {e}")))?;
                let fresh = Stored {
                    key_id: format!("tidegate:{}:parquet:1", self.tenant_id),
                    sealed: STANDARD.encode(sealed),
                };
                let value =
                    serde_json::to_value(&fresh).map_err(|e| ApiError::internal(e.to_string()))?;
                self.store
                    .init_tenant_setting(&self.tenant_id, SETTING, &value)
                    .await?
            }
        };
        let malformed = || ApiError::internal("the stored Parquet key is malformed");
        let stored: Stored = serde_json::from_value(stored).map_err(|_| malformed())?;
        let sealed = STANDARD.decode(&stored.sealed).map_err(|_| malformed())?;
        let key = self.keyring.open(&object, &sealed).map_err(|e| {
            tracing::error!(message = "the tenant's Parquet key did not open", error = %e);
            ApiError::internal("the tenant's Parquet key could not be opened")
        })?;
        Ok(ParquetKey {
            key_id: stored.key_id,
            key: Zeroizing::new(key.expose().to_vec()),
        })
    }

    /// Adds the tenant's Parquet key to a target that asks for it (`encryption = tenant`).
    pub(crate) async fn attach_parquet_key(
        &self,
        target: &mut tidegate_proto::ConnectionSpec,
    ) -> Result<(), ApiError> {
        if target.settings.get("encryption").map(String::as_str) != Some("tenant") {
            return Ok(());
        }
        let key = self.tenant_parquet_key().await?;
        target
            .settings
            .insert("parquet_key_id".to_owned(), key.key_id);
        target.secrets.insert(
            "parquet_key",
            SecretString::new(STANDARD.encode(key.key.as_slice())),
        );
        Ok(())
    }
}
