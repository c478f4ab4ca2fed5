//! What a control plane makes sure of before it serves: its state directory, the metadata
//! database (migrated), the tenant and its default data space, the tenant's data key, and the
//! bootstrap administrator. Every step finds what an earlier start (or another control plane
//! sharing the database) made, so starting again changes nothing.

use std::path::Path;
use std::sync::Arc;

use tidegate_metadata::{
    DataKey, MetadataStore, NewDataKey, NewDataSpace, NewUser, PageRequest, PasswordHash, SqlStore,
    StoreOptions,
};
use tidegate_proto::SecretString;
use tidegate_rbac::SystemRole;
use tidegate_secrets::{KeyProvider, Keyring, LocalKeyFile, WrappedDataKey};

use crate::{ControlPlaneConfig, Error};

/// The name of the tenant a control plane serves.
pub(crate) const TENANT: &str = "default";
/// The name of the data space requests without one go to.
pub(crate) const DEFAULT_SPACE: &str = "Default";
/// The metadata database's file name in the state directory.
const DATABASE_FILE: &str = "metadata.db";
/// The key file's name in the state directory.
const KEY_FILE: &str = "keys";

/// What [`prepare`] found or made.
pub(crate) struct Prepared {
    pub(crate) store: SqlStore,
    pub(crate) tenant_id: String,
    pub(crate) default_space_id: String,
    pub(crate) keyring: Keyring,
    pub(crate) temp_dir: Option<tempfile::TempDir>,
}

/// Opens the state directory, the database and the key file, and makes sure the tenant, its
/// default data space and its data key exist.
pub(crate) async fn prepare(config: &ControlPlaneConfig) -> Result<Prepared, Error> {
    let (dir, temp_dir) = match &config.state_dir {
        Some(dir) => {
            create_private_dir(dir)?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("tidegate-control-plane-")
                .tempdir()
                .map_err(|source| Error::StateDir {
                    path: std::env::temp_dir(),
                    source,
                })?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let options = match &config.database_url {
        Some(url) => StoreOptions::new(url.clone()),
        None => {
            let file = dir.join(DATABASE_FILE);
            create_private_file(&file)?;
            StoreOptions::sqlite_file(&file)
        }
    };
    let store = SqlStore::open_with(&options).await?;
    let provider: Arc<dyn KeyProvider> =
        Arc::new(LocalKeyFile::open_or_create(dir.join(KEY_FILE))?);
    let tenant_id = tenant(&store).await?;
    let default_space_id = default_space(&store, &tenant_id).await?;
    let keyring = keyring(&store, provider, &tenant_id).await?;
    if let Some((username, password)) = &config.bootstrap_admin {
        bootstrap_admin(&store, &tenant_id, username, password).await?;
    }
    Ok(Prepared {
        store,
        tenant_id,
        default_space_id,
        keyring,
        temp_dir,
    })
}

/// Creates `dir` (and its parents) if missing, readable by its owner only.
fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let failed = |source| Error::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    if !dir.is_dir() {
        return Err(failed(std::io::Error::other("not a directory")));
    }
    Ok(())
}

/// Creates `file` empty and readable by its owner only, unless it exists. SQLite gives its
/// journal files the database file's mode, so they are private too.
fn create_private_file(file: &Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::StateDir {
            path: file.to_path_buf(),
            source,
        }),
    }
}

/// Every item of a list, page by page.
async fn all<T, F, Fut>(mut list: F) -> Result<Vec<T>, tidegate_metadata::Error>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<tidegate_metadata::Page<T>, tidegate_metadata::Error>>,
{
    let mut items = Vec::new();
    let mut request = PageRequest::first(tidegate_metadata::MAX_PAGE_LIMIT);
    loop {
        let page = list(request.clone()).await?;
        items.extend(page.items);
        match page.next {
            Some(next) => request.after = Some(next),
            None => return Ok(items),
        }
    }
}

/// The id of the tenant named [`TENANT`], created if missing. A second control plane creating
/// it at the same moment loses on the unique name and finds the winner's.
async fn tenant(store: &SqlStore) -> Result<String, Error> {
    for _ in 0..2 {
        let tenants = all(|page| async move { store.tenants(&page).await }).await?;
        if let Some(t) = tenants.into_iter().find(|t| t.name == TENANT) {
            return Ok(t.id);
        }
        match store.create_tenant(TENANT).await {
            Ok(t) => return Ok(t.id),
            Err(tidegate_metadata::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Bootstrap("the tenant could not be created".into()))
}

/// The id of the tenant's data space named [`DEFAULT_SPACE`], created if missing.
async fn default_space(store: &SqlStore, tenant_id: &str) -> Result<String, Error> {
    for _ in 0..2 {
        let spaces = all(|page| async move { store.spaces(tenant_id, &page).await }).await?;
        if let Some(s) = spaces.into_iter().find(|s| s.name == DEFAULT_SPACE) {
            return Ok(s.id);
        }
        let new = NewDataSpace {
            tenant_id: tenant_id.to_owned(),
            name: DEFAULT_SPACE.to_owned(),
            description: "Where objects go when a request names no data space.".to_owned(),
        };
        match store.create_space(&new).await {
            Ok(s) => return Ok(s.id),
            Err(tidegate_metadata::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Bootstrap(
        "the default data space could not be created".into(),
    ))
}

/// Creates the bootstrap administrator, holding every system role, unless a user of that name
/// exists (whatever its roles now: an administrator may have changed them on purpose).
async fn bootstrap_admin(
    store: &SqlStore,
    tenant_id: &str,
    username: &str,
    password: &SecretString,
) -> Result<(), Error> {
    match store.user_by_username(tenant_id, username).await {
        Ok(_) => return Ok(()),
        Err(tidegate_metadata::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let password = password.clone();
    let hash =
        tokio::task::spawn_blocking(move || tidegate_identity::password::hash(password.expose()))
            .await
            .map_err(|_| Error::Bootstrap("password hashing failed".into()))?
            .map_err(|e| Error::Bootstrap(e.to_string()))?;
    let new = NewUser {
        tenant_id: tenant_id.to_owned(),
        username: username.to_owned(),
        display_name: username.to_owned(),
        email: crate::api::NO_EMAIL.to_owned(),
        password_hash: Some(PasswordHash::new(hash)),
        oidc: None,
    };
    let user = match store.create_user(&new).await {
        Ok(user) => user,
        // Another control plane created it at the same moment.
        Err(tidegate_metadata::Error::Conflict(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for role in SystemRole::ALL {
        match store.grant_system_role(&user.id, role.as_str()).await {
            Ok(_) | Err(tidegate_metadata::Error::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(message = "bootstrap administrator created", user = %user.id, %username);
    Ok(())
}

/// The tenant's keyring: its stored data keys unwrapped, or a first data key made and stored.
async fn keyring(
    store: &SqlStore,
    provider: Arc<dyn KeyProvider>,
    tenant_id: &str,
) -> Result<Keyring, Error> {
    for _ in 0..2 {
        let stored = all(|page| async move { store.data_keys(tenant_id, &page).await }).await?;
        if !stored.is_empty() {
            let wrapped = stored.iter().map(wrapped).collect::<Result<Vec<_>, _>>()?;
            return Ok(Keyring::load(provider, tenant_id, wrapped).await?);
        }
        let (keyring, first) = Keyring::create(provider.clone(), tenant_id).await?;
        let new = NewDataKey {
            tenant_id: tenant_id.to_owned(),
            kek_id: first.kek_id.clone(),
            wrapped_key: first.ciphertext.clone(),
            activate: true,
        };
        match store.add_data_key(&new).await {
            // The store numbers versions; the keyring bound version 1 into the wrapping.
            Ok(key) if key.version == i64::from(first.version) => return Ok(keyring),
            Ok(key) => {
                return Err(Error::Bootstrap(format!(
                    "the tenant's first data key was stored as version {}",
                    key.version
                )));
            }
            // Another control plane stored its first key meanwhile: use that one.
            Err(tidegate_metadata::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Bootstrap(
        "the tenant's data key could not be created".into(),
    ))
}

fn wrapped(key: &DataKey) -> Result<WrappedDataKey, Error> {
    let version = u32::try_from(key.version).map_err(|_| {
        Error::Bootstrap(format!("data key version {} is out of range", key.version))
    })?;
    Ok(WrappedDataKey {
        tenant: key.tenant_id.clone(),
        version,
        kek_id: key.kek_id.clone(),
        ciphertext: key.wrapped_key.clone(),
    })
}
