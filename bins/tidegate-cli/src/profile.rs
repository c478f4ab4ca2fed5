//! Where `tidegate login` keeps the control plane's URL, its CA and the session token.
//!
//! One JSON file, `credentials.json`, in `$TIDEGATE_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/tidegate`, else `~/.config/tidegate`. It is created with mode 0600 and
//! refused when others can read it, since the token is a bearer credential.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde_json::{Value, json};

/// What a login leaves behind.
pub(crate) struct Profile {
    pub(crate) url: String,
    pub(crate) ca_pem: Option<String>,
    pub(crate) token: String,
}

fn dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TIDEGATE_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("tidegate"));
    }
    let home = std::env::var_os("HOME").ok_or("neither TIDEGATE_CONFIG_DIR nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config/tidegate"))
}

fn path() -> Result<PathBuf, String> {
    Ok(dir()?.join("credentials.json"))
}

pub(crate) fn save(profile: &Profile) -> Result<PathBuf, String> {
    let dir = dir()?;
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = path()?;
    let body = json!({"url": profile.url, "ca_pem": profile.ca_pem, "token": profile.token});
    // Write a fresh file with mode 0600, then move it over the old one.
    let tmp = dir.join(".credentials.json.tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    file.write_all(body.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

pub(crate) fn load() -> Result<Option<Profile>, String> {
    let path = path()?;
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let mode = fs::metadata(&path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}); run `chmod 600` on it or log in again",
            path.display(),
            mode & 0o777
        ));
    }
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()))?;
    let field = |name: &str| value[name].as_str().map(str::to_owned);
    match (field("url"), field("token")) {
        (Some(url), Some(token)) => Ok(Some(Profile {
            url,
            ca_pem: field("ca_pem"),
            token,
        })),
        _ => Err(format!(
            "{} lacks url or token; log in again",
            path.display()
        )),
    }
}

pub(crate) fn remove() -> Result<bool, String> {
    let path = path()?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}
