//! The gateway's identity file: the one thing the gateway writes to its state directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidegate_auth::IdentityKey;
use zeroize::Zeroizing;

use crate::Error;

/// The identity file's name inside the state directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// Who the gateway is: its id, the control plane it enrolled with, and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The gateway's id on the control plane.
    pub gateway_id: String,
    /// The control plane's id (the audience of the gateway's tokens).
    pub audience: String,
    /// The private identity key.
    pub key: IdentityKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    gateway_id: String,
    audience: String,
    private_key_pem: String,
}

impl Identity {
    /// The identity file's path under `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(IDENTITY_FILE)
    }

    /// Loads the identity from `state_dir`. Refuses a file others can read.
    pub fn load(state_dir: &Path) -> Result<Self, Error> {
        let path = Self::path(state_dir);
        let meta = std::fs::metadata(&path).map_err(|e| Error::Identity {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::Identity {
                path,
                reason: "readable by others; chmod 600 it".into(),
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| Error::Identity {
            path: path.clone(),
            reason: e.to_string(),
        })?);
        let file: IdentityFile = serde_json::from_str(&text).map_err(|e| Error::Identity {
            path: path.clone(),
            reason: format!("not a gateway identity file: {e}"),
        })?;
        let pem = Zeroizing::new(file.private_key_pem);
        let key = IdentityKey::from_pem(&pem).map_err(|e| Error::Identity {
            path,
            reason: e.to_string(),
        })?;
        Ok(Self {
            gateway_id: file.gateway_id,
            audience: file.audience,
            key,
        })
    }

    /// Writes the identity to `state_dir` with mode 0600, atomically (temp file and rename).
    pub fn save(&self, state_dir: &Path) -> Result<(), Error> {
        let path = Self::path(state_dir);
        let err = |reason: String| Error::Identity {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| err(e.to_string()))?;
        let file = IdentityFile {
            gateway_id: self.gateway_id.clone(),
            audience: self.audience.clone(),
            private_key_pem: self.key.to_pem().to_string(),
        };
        let text =
            Zeroizing::new(serde_json::to_string_pretty(&file).map_err(|e| err(e.to_string()))?);
        drop(Zeroizing::new(file.private_key_pem));
        let tmp = state_dir.join(format!(".{IDENTITY_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(e.to_string()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}
