//! The default key provider: key-encryption keys in a local file.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::key::fill_random;
use crate::provider::{BoxFuture, KeyProvider, WrappedKey};
use crate::{Error, KeyMaterial};

const HEADER: &str = "tidegate-kek-file 1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const MAX_ID: usize = 64;
/// A key file is a few lines; anything larger is not one.
const MAX_FILE: u64 = 1 << 20;

/// Key-encryption keys (KEKs) in a local file: the default [`KeyProvider`].
///
/// The file is text, one KEK a line, exactly one of them active:
///
/// ```text
/// tidegate-kek-file 1
/// active kek-5f0c1e2d3a4b5c6d
/// kek kek-0a1b2c3d4e5f6a7b <base64 of 32 random bytes>
/// kek kek-5f0c1e2d3a4b5c6d <base64 of 32 random bytes>
/// ```
///
/// [`LocalKeyFile::open_or_create`] creates it with one KEK and mode `0600`, and refuses a file
/// that is readable or writable by group or others, or malformed. A wrapped data key is
/// `nonce (24 bytes) ‖ XChaCha20-Poly1305(KEK, nonce, aad, data key) (48 bytes)`.
///
/// [`rotate`](LocalKeyFile::rotate) and [`retire`](LocalKeyFile::retire) rewrite the file
/// atomically (a new file renamed over the old one). They block on the file system: call them
/// at start or from `spawn_blocking`. Wrap and unwrap never touch the file.
pub struct LocalKeyFile {
    path: PathBuf,
    keks: RwLock<Keks>,
}

struct Keks {
    active: String,
    keys: Vec<(String, KeyMaterial)>,
}

impl Keks {
    fn get(&self, id: &str) -> Option<&KeyMaterial> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }
}

impl fmt::Debug for LocalKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyFile")
            .field("path", &self.path)
            .field("kek_ids", &self.kek_ids())
            .finish()
    }
}

impl LocalKeyFile {
    /// Opens the key file at `path`, creating it (mode `0600`, one fresh KEK) if it is missing.
    pub fn open_or_create(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        match fs::symlink_metadata(&path) {
            Ok(_) => Self::open(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = new_kek_id()?;
                let keks = Keks {
                    active: id.clone(),
                    keys: vec![(id, KeyMaterial::generate()?)],
                };
                write_file(&path, &keks, true)?;
                Ok(Self {
                    path,
                    keks: RwLock::new(keks),
                })
            }
            Err(source) => Err(Error::KeyFile { path, source }),
        }
    }

    /// Opens an existing key file, refusing one with loose permissions or a malformed one.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let keks = read_file(&path)?;
        Ok(Self {
            path,
            keks: RwLock::new(keks),
        })
    }

    /// Adds a new KEK and makes it the active one; the old ones stay for unwrapping. Returns
    /// the new KEK's id. Re-wrap every data key afterwards (`Keyring::rewrap`) and only then
    /// [`retire`](LocalKeyFile::retire) the old KEK.
    pub fn rotate(&self) -> Result<String, Error> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        let id = new_kek_id()?;
        let mut next = Keks {
            active: id.clone(),
            keys: keks.keys.clone(),
        };
        next.keys.push((id.clone(), KeyMaterial::generate()?));
        // The file first: if it cannot be written, nothing changes.
        write_file(&self.path, &next, false)?;
        *keks = next;
        Ok(id)
    }

    /// Removes a KEK that is no longer active. Anything still wrapped under it can no longer be
    /// unwrapped: retire a KEK only once every data key was re-wrapped and persisted.
    pub fn retire(&self, kek_id: &str) -> Result<(), Error> {
        let mut keks = self.keks.write().unwrap_or_else(PoisonError::into_inner);
        if keks.active == kek_id {
            return Err(Error::ActiveKek {
                kek_id: kek_id.to_owned(),
            });
        }
        if keks.get(kek_id).is_none() {
            return Err(Error::UnknownKek {
                kek_id: kek_id.to_owned(),
            });
        }
        let next = Keks {
            active: keks.active.clone(),
            keys: keks
                .keys
                .iter()
                .filter(|(id, _)| id != kek_id)
                .cloned()
                .collect(),
        };
        write_file(&self.path, &next, false)?;
        *keks = next;
        Ok(())
    }

    /// The ids of the KEKs in the file, oldest first.
    pub fn kek_ids(&self) -> Vec<String> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        keks.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn wrap_now(&self, key: &KeyMaterial, aad: &[u8]) -> Result<WrappedKey, Error> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let kek = keks.get(&keks.active).ok_or_else(|| Error::UnknownKek {
            kek_id: keks.active.clone(),
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let sealed = XChaCha20Poly1305::new(kek.expose().into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: key.expose(),
                    aad,
                },
            )
            .map_err(|_| Error::Wrap {
                kek_id: keks.active.clone(),
            })?;
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(&sealed);
        Ok(WrappedKey {
            kek_id: keks.active.clone(),
            ciphertext,
        })
    }

    fn unwrap_now(&self, wrapped: &WrappedKey, aad: &[u8]) -> Result<KeyMaterial, Error> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let kek = keks.get(&wrapped.kek_id).ok_or_else(|| Error::UnknownKek {
            kek_id: wrapped.kek_id.clone(),
        })?;
        let refused = || Error::Unwrap {
            kek_id: wrapped.kek_id.clone(),
        };
        let (nonce, sealed) = wrapped
            .ciphertext
            .split_first_chunk::<NONCE_LEN>()
            .ok_or_else(refused)?;
        if sealed.len() != 32 + TAG_LEN {
            return Err(refused());
        }
        let mut plain = Zeroizing::new(sealed.to_vec());
        chacha20poly1305::AeadInOut::decrypt_in_place(
            &XChaCha20Poly1305::new(kek.expose().into()),
            &XNonce::from(*nonce),
            aad,
            &mut *plain,
        )
        .map_err(|_| refused())?;
        KeyMaterial::from_slice(&plain).ok_or_else(refused)
    }
}

impl KeyProvider for LocalKeyFile {
    fn current_kek_id(&self) -> BoxFuture<'_, Result<String, Error>> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        let id = keks.active.clone();
        Box::pin(async move { Ok(id) })
    }

    fn wrap<'a>(
        &'a self,
        key: &'a KeyMaterial,
        aad: &'a [u8],
    ) -> BoxFuture<'a, Result<WrappedKey, Error>> {
        Box::pin(async move { self.wrap_now(key, aad) })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        aad: &'a [u8],
    ) -> BoxFuture<'a, Result<KeyMaterial, Error>> {
        Box::pin(async move { self.unwrap_now(wrapped, aad) })
    }
}

fn new_kek_id() -> Result<String, Error> {
    let mut raw = [0u8; 8];
    fill_random(&mut raw)?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("kek-{hex}"))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn read_file(path: &Path) -> Result<Keks, Error> {
    let io_err = |source| Error::KeyFile {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    check_permissions(path, &meta)?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(malformed(path, 0, "not a regular file of at most 1 MiB"));
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err)?);
    parse(path, &text)
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _meta: &fs::Metadata) -> Result<(), Error> {
    // Other platforms: protect the file with the platform's access control lists.
    Ok(())
}

fn malformed(path: &Path, line: usize, reason: &'static str) -> Error {
    Error::KeyFileMalformed {
        path: path.to_owned(),
        line,
        reason,
    }
}

/// Parses the key file. Errors name the line number and what is wrong with it, never its text.
fn parse(path: &Path, text: &str) -> Result<Keks, Error> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    match lines.next() {
        Some((_, HEADER)) => {}
        _ => {
            return Err(malformed(
                path,
                1,
                "the first line is not `tidegate-kek-file 1`",
            ));
        }
    }
    let mut active = None;
    let mut keys: Vec<(String, KeyMaterial)> = Vec::new();
    for (n, line) in lines {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["active", id] if valid_id(id) => {
                if active.replace((*id).to_owned()).is_some() {
                    return Err(malformed(path, n, "a second `active` line"));
                }
            }
            ["kek", id, key] if valid_id(id) => {
                let raw = Zeroizing::new(
                    STANDARD
                        .decode(key)
                        .map_err(|_| malformed(path, n, "the key is not base64"))?,
                );
                let key = KeyMaterial::from_slice(&raw)
                    .ok_or_else(|| malformed(path, n, "the key is not 32 bytes"))?;
                if keys.iter().any(|(k, _)| k == id) {
                    return Err(malformed(path, n, "a KEK id appears twice"));
                }
                keys.push(((*id).to_owned(), key));
            }
            _ => {
                return Err(malformed(
                    path,
                    n,
                    "expected `active <id>` or `kek <id> <base64 key>`",
                ));
            }
        }
    }
    let active = active.ok_or_else(|| malformed(path, 0, "no `active` line"))?;
    if !keys.iter().any(|(k, _)| *k == active) {
        return Err(malformed(path, 0, "the active KEK is not in the file"));
    }
    Ok(Keks { active, keys })
}

/// Writes the key file: a new file (mode `0600`) in the same directory, synced, then renamed
/// over `path`, and the directory synced, so that a rotation that returned survives a crash
/// (data keys re-wrapped under a KEK the file then lost would be unrecoverable). With
/// `create_only`, fails if `path` exists.
fn write_file(path: &Path, keks: &Keks, create_only: bool) -> Result<(), Error> {
    let mut text = Zeroizing::new(format!(
        "{HEADER}\n# Tidegate key-encryption keys. Keep secret: mode 0600, never in backups of the metadata database.\nactive {}\n",
        keks.active
    ));
    for (id, key) in &keks.keys {
        let b64 = Zeroizing::new(STANDARD.encode(key.expose()));
        text.push_str("kek ");
        text.push_str(id);
        text.push(' ');
        text.push_str(&b64);
        text.push('\n');
    }
    let io_err = |source| Error::KeyFile {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if create_only {
            // `hard_link` fails if `path` exists, so a concurrent creator is never overwritten.
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
        } else {
            fs::rename(&tmp, path)?;
        }
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)?.sync_all(),
        _ => fs::File::open(".")?.sync_all(),
    }
}

#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing everywhere; the rename is what the platform gives.
    Ok(())
}
