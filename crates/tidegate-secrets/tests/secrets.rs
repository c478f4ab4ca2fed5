//! Envelope encryption through the public API: sealing, tampering, binding, both rotations,
//! the key file and redaction.

use std::sync::Arc;

use tidegate_secrets::{
    Error, HEADER_LEN, KeyMaterial, KeyProvider, Keyring, LocalKeyFile, WrappedDataKey,
    rewrap_data_key, sealed_version,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const SECRET: &[u8] = br#"{"user":"etl","password":"hunter2-very-secret"}"#;

fn key_file(dir: &tempfile::TempDir) -> Result<Arc<LocalKeyFile>> {
    Ok(Arc::new(LocalKeyFile::open_or_create(
        dir.path().join("kek"),
    )?))
}

async fn keyring(dir: &tempfile::TempDir, tenant: &str) -> Result<(Arc<LocalKeyFile>, Keyring)> {
    let kek = key_file(dir)?;
    let (keyring, _) = Keyring::create(kek.clone(), tenant).await?;
    Ok((kek, keyring))
}

#[tokio::test]
async fn seal_and_open_round_trip_with_fresh_nonces() -> Result {
    let dir = tempfile::tempdir()?;
    let (_, ring) = keyring(&dir, "acme").await?;
    let a = ring.seal("conn_1", SECRET)?;
    let b = ring.seal("conn_1", SECRET)?;
    assert_ne!(a, b, "every seal has a fresh nonce");
    assert_eq!(ring.open("conn_1", &a)?.expose(), SECRET);
    assert_eq!(ring.open("conn_1", &b)?.expose(), SECRET);
    assert_eq!(
        ring.open("conn_1", &ring.seal("conn_1", b"")?)?.expose(),
        b""
    );
    assert_eq!(&a[..4], b"tgs\x01");
    assert_eq!(sealed_version(&a)?, 1);
    assert!(!a.windows(7).any(|w| w == b"hunter2"));
    Ok(())
}

#[tokio::test]
async fn a_flipped_bit_in_any_byte_fails_to_open() -> Result {
    let dir = tempfile::tempdir()?;
    let (_, ring) = keyring(&dir, "acme").await?;
    let blob = ring.seal("conn_1", SECRET)?;
    for i in 0..blob.len() {
        for bit in 0..8 {
            let mut bad = blob.clone();
            bad[i] ^= 1 << bit;
            let err = ring.open("conn_1", &bad).expect_err("tampered blob opened");
            let expected = match i {
                0..4 => matches!(err, Error::Malformed { .. }),
                4..8 => matches!(err, Error::UnknownDataKey { .. }),
                _ => matches!(err, Error::Open { .. }),
            };
            assert!(expected, "byte {i} bit {bit}: {err:?}");
        }
    }
    // Truncated and extended blobs.
    for len in 0..blob.len() {
        assert!(
            ring.open("conn_1", &blob[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert!(matches!(
        ring.open("conn_1", &longer),
        Err(Error::Open { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn a_blob_opens_only_for_its_tenant_and_object() -> Result {
    let dir = tempfile::tempdir()?;
    let kek = key_file(&dir)?;
    let (acme, _) = Keyring::create(kek.clone(), "acme").await?;
    let (globex, _) = Keyring::create(kek.clone(), "globex").await?;
    let blob = acme.seal("conn_1", SECRET)?;
    assert!(matches!(
        acme.open("conn_2", &blob),
        Err(Error::Open { .. })
    ));
    assert!(matches!(
        globex.open("conn_1", &blob),
        Err(Error::Open { .. })
    ));
    assert!(matches!(
        acme.open("", &blob),
        Err(Error::InvalidName { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn wrapped_keys_are_bound_to_tenant_version_and_kek() -> Result {
    let dir = tempfile::tempdir()?;
    let kek = key_file(&dir)?;
    let (_, wrapped) = Keyring::create(kek.clone(), "acme").await?;

    // Relabelled as another tenant's or another version's key: does not unwrap.
    let relabelled = WrappedDataKey {
        tenant: "globex".into(),
        ..wrapped.clone()
    };
    let err = Keyring::load(kek.clone(), "globex", [relabelled])
        .await
        .expect_err("relabelled tenant");
    assert!(matches!(err, Error::Unwrap { .. }), "{err:?}");
    let other_version = WrappedDataKey {
        version: 2,
        ..wrapped.clone()
    };
    let err = Keyring::load(kek.clone(), "acme", [other_version])
        .await
        .expect_err("version");
    assert!(matches!(err, Error::Unwrap { .. }), "{err:?}");
    // Another tenant's key handed to this keyring.
    let err = Keyring::load(kek.clone(), "globex", [wrapped.clone()])
        .await
        .expect_err("mismatch");
    assert!(matches!(err, Error::TenantMismatch { .. }), "{err:?}");

    // A different key file (wrong KEK, same id or not): does not unwrap.
    let other_dir = tempfile::tempdir()?;
    let other = key_file(&other_dir)?;
    let err = Keyring::load(other.clone(), "acme", [wrapped.clone()])
        .await
        .expect_err("wrong KEK");
    assert!(matches!(err, Error::UnknownKek { .. }), "{err:?}");
    let same_id = WrappedDataKey {
        kek_id: other.current_kek_id().await?,
        ..wrapped.clone()
    };
    let err = Keyring::load(other, "acme", [same_id])
        .await
        .expect_err("wrong KEK");
    assert!(matches!(err, Error::Unwrap { .. }), "{err:?}");

    // A tampered wrapped key.
    for i in 0..wrapped.ciphertext.len() {
        let mut bad = wrapped.clone();
        bad.ciphertext[i] ^= 0x40;
        assert!(Keyring::load(kek.clone(), "acme", [bad]).await.is_err());
    }
    assert!(matches!(
        Keyring::load(kek.clone(), "acme", []).await,
        Err(Error::NoDataKey { .. })
    ));
    Ok(())
}

/// KEK rotation: seal under the old KEK, rotate, re-wrap, open; retire the old KEK; reload
/// from the persisted keys and open again. Seals and opens work at every step.
#[tokio::test]
async fn kek_rotation_rewraps_without_touching_sealed_secrets() -> Result {
    let dir = tempfile::tempdir()?;
    let kek = key_file(&dir)?;
    let (ring, wrapped_v1) = Keyring::create(kek.clone(), "acme").await?;
    let old_kek = wrapped_v1.kek_id.clone();
    let before = ring.seal("conn_1", SECRET)?;

    let new_kek = kek.rotate()?;
    assert_ne!(new_kek, old_kek);
    assert_eq!(kek.current_kek_id().await?, new_kek);
    // Between rotate and rewrap: everything still works, from memory and from storage.
    assert_eq!(ring.open("conn_1", &before)?.expose(), SECRET);
    let during = ring.seal("conn_2", SECRET)?;
    let reloaded = Keyring::load(kek.clone(), "acme", [wrapped_v1.clone()]).await?;
    assert_eq!(reloaded.open("conn_2", &during)?.expose(), SECRET);

    let rewrapped = ring.rewrap().await?;
    assert_eq!(rewrapped.len(), 1);
    assert_eq!(rewrapped[0].kek_id, new_kek);
    assert_eq!(rewrapped[0].version, 1);
    assert!(ring.rewrap().await?.is_empty(), "nothing left to re-wrap");
    assert_eq!(ring.wrapped_keys(), rewrapped);

    // Retire the old KEK: the old wrapped form no longer unwraps, the new one does, and the
    // blobs sealed before the rotation are untouched and open.
    kek.retire(&old_kek)?;
    assert_eq!(kek.kek_ids(), std::slice::from_ref(&new_kek));
    let err = Keyring::load(kek.clone(), "acme", [wrapped_v1.clone()])
        .await
        .expect_err("retired");
    assert!(matches!(err, Error::UnknownKek { .. }), "{err:?}");
    let reopened_file = Arc::new(LocalKeyFile::open(kek.path())?);
    let reloaded = Keyring::load(reopened_file, "acme", rewrapped).await?;
    assert_eq!(reloaded.open("conn_1", &before)?.expose(), SECRET);
    assert_eq!(reloaded.open("conn_2", &during)?.expose(), SECRET);
    assert!(matches!(kek.retire(&new_kek), Err(Error::ActiveKek { .. })));
    assert!(matches!(
        kek.retire("kek-nope"),
        Err(Error::UnknownKek { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn rewrap_data_key_works_on_stored_keys_alone() -> Result {
    let dir = tempfile::tempdir()?;
    let kek = key_file(&dir)?;
    let (ring, wrapped) = Keyring::create(kek.clone(), "acme").await?;
    let blob = ring.seal("conn_1", SECRET)?;
    assert_eq!(
        rewrap_data_key(&*kek, &wrapped).await?,
        wrapped,
        "already current"
    );
    kek.rotate()?;
    let rewrapped = rewrap_data_key(&*kek, &wrapped).await?;
    assert_ne!(rewrapped.kek_id, wrapped.kek_id);
    kek.retire(&wrapped.kek_id)?;
    let ring = Keyring::load(kek, "acme", [rewrapped]).await?;
    assert_eq!(ring.open("conn_1", &blob)?.expose(), SECRET);
    Ok(())
}

/// Data-key rotation: new seals use the new version, old blobs still open, reseal moves them.
#[tokio::test]
async fn data_key_rotation_and_reseal() -> Result {
    let dir = tempfile::tempdir()?;
    let kek = key_file(&dir)?;
    let (ring, v1) = Keyring::create(kek.clone(), "acme").await?;
    let old = ring.seal("conn_1", SECRET)?;
    let v2 = ring.rotate_data_key().await?;
    assert_eq!((v2.version, ring.active_version()), (2, 2));
    let new = ring.seal("conn_1", SECRET)?;
    assert_eq!((sealed_version(&old)?, sealed_version(&new)?), (1, 2));
    assert_eq!(ring.open("conn_1", &old)?.expose(), SECRET);

    let moved = ring.reseal("conn_1", &old)?.expect("moved to v2");
    assert_eq!(sealed_version(&moved)?, 2);
    assert_eq!(ring.open("conn_1", &moved)?.expose(), SECRET);
    assert_eq!(ring.reseal("conn_1", &new)?, None);
    // A reseal authenticates: it neither launders a tampered blob nor moves it elsewhere.
    let mut bad = new.clone();
    bad[HEADER_LEN] ^= 1;
    assert!(ring.reseal("conn_1", &bad).is_err());
    assert!(ring.reseal("conn_2", &old).is_err());

    // Reloaded from storage with both versions: both open; with v2 only, v1 blobs do not.
    let both = Keyring::load(kek.clone(), "acme", [v2.clone(), v1.clone()]).await?;
    assert_eq!(both.active_version(), 2);
    assert_eq!(both.open("conn_1", &old)?.expose(), SECRET);
    let only_v2 = Keyring::load(kek.clone(), "acme", [v2.clone()]).await?;
    assert!(matches!(
        only_v2.open("conn_1", &old),
        Err(Error::UnknownDataKey { version: 1, .. })
    ));
    assert_eq!(only_v2.open("conn_1", &moved)?.expose(), SECRET);
    assert!(matches!(
        Keyring::load(kek, "acme", [v1.clone(), v1]).await,
        Err(Error::DuplicateVersion { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn seals_and_opens_go_on_during_rotations() -> Result {
    let dir = tempfile::tempdir()?;
    let kek = key_file(&dir)?;
    let (ring, _) = Keyring::create(kek.clone(), "acme").await?;
    let ring = Arc::new(ring);
    let blob = ring.seal("conn_1", SECRET)?;
    let worker = {
        let ring = ring.clone();
        std::thread::spawn(move || -> std::result::Result<(), Error> {
            for _ in 0..500 {
                let fresh = ring.seal("conn_1", SECRET)?;
                assert_eq!(ring.open("conn_1", &fresh)?.expose(), SECRET);
                assert_eq!(ring.open("conn_1", &blob)?.expose(), SECRET);
            }
            Ok(())
        })
    };
    for _ in 0..5 {
        kek.rotate()?;
        ring.rewrap().await?;
        ring.rotate_data_key().await?;
    }
    worker.join().expect("worker")?;
    assert_eq!(ring.active_version(), 6);
    Ok(())
}

#[tokio::test]
async fn malformed_blobs_are_errors() -> Result {
    let dir = tempfile::tempdir()?;
    let (_, ring) = keyring(&dir, "acme").await?;
    let cases: &[&[u8]] = &[
        b"",
        b"tgs",
        b"tgs\x02\0\0\0\x01",
        b"xyz\x01\0\0\0\x01",
        &[b't', b'g', b's', 1, 0, 0, 0, 1, 0, 0, 0],
    ];
    for blob in cases {
        assert!(matches!(
            ring.open("conn_1", blob),
            Err(Error::Malformed { .. })
        ));
    }
    let huge = vec![0u8; tidegate_secrets::MAX_SECRET_LEN + 1];
    assert!(matches!(
        ring.seal("conn_1", &huge),
        Err(Error::TooLarge { .. })
    ));
    Ok(())
}

#[cfg(unix)]
#[test]
fn the_key_file_is_created_0600_and_refused_when_loose_or_malformed() -> Result {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kek");
    let kek = LocalKeyFile::open_or_create(&path)?;
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    kek.rotate()?;
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(LocalKeyFile::open(&path)?.kek_ids(), kek.kek_ids());

    for loose in [0o640, 0o604, 0o660, 0o644] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose))?;
        let err = LocalKeyFile::open_or_create(&path).expect_err("loose permissions");
        assert!(
            matches!(err, Error::KeyFilePermissions { mode, .. } if mode == loose),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;

    let text = std::fs::read_to_string(&path)?;
    let key_line = text
        .lines()
        .find(|l| l.starts_with("kek "))
        .expect("a kek line");
    let secret_b64 = key_line.split(' ').nth(2).expect("key");
    let malformed = [
        String::new(),
        "tidegate-kek-file 2\n".to_owned(),
        text.replace("active ", "actve "),
        text.replace(secret_b64, "AAAA"),
        text.replace(secret_b64, "not base64!"),
        format!("{text}{key_line}\n"),
        format!("{text}active kek-other\n"),
        text.lines()
            .filter(|l| !l.starts_with("active"))
            .collect::<Vec<_>>()
            .join("\n"),
    ];
    for (i, bad) in malformed.iter().enumerate() {
        std::fs::write(&path, bad)?;
        let err = LocalKeyFile::open(&path).expect_err("malformed");
        assert!(
            matches!(err, Error::KeyFileMalformed { .. }),
            "case {i}: {err:?}"
        );
        assert!(
            !err.to_string().contains(secret_b64),
            "case {i} leaks the key"
        );
    }
    Ok(())
}

#[tokio::test]
async fn debug_and_errors_never_show_keys_or_secrets() -> Result {
    let dir = tempfile::tempdir()?;
    let kek = key_file(&dir)?;
    let (ring, wrapped) = Keyring::create(kek.clone(), "acme").await?;
    let blob = ring.seal("conn_1", SECRET)?;
    let opened = ring.open("conn_1", &blob)?;
    let material = KeyMaterial::generate()?;
    let file = std::fs::read_to_string(kek.path())?;
    let kek_b64 = file
        .lines()
        .find_map(|l| l.strip_prefix("kek ")?.split(' ').nth(1))
        .expect("kek line")
        .to_owned();

    let shown = [
        format!("{opened:?}"),
        format!("{material:?}"),
        format!("{ring:?}"),
        format!("{kek:?}"),
        format!("{wrapped:?}"),
        format!(
            "{:?}",
            ring.open("conn_2", &blob).expect_err("other object")
        ),
        ring.open("conn_2", &blob)
            .expect_err("other object")
            .to_string(),
    ];
    for text in &shown {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&kek_b64), "{text}");
        assert!(
            !text.contains(&format!("{:?}", material.expose())),
            "{text}"
        );
    }
    assert!(shown[0].contains("redacted") && shown[1].contains("redacted"));
    Ok(())
}

#[test]
fn wrapped_data_keys_serialize_as_plain_records() -> Result {
    let key = WrappedDataKey {
        tenant: "acme".into(),
        version: 3,
        kek_id: "kek-01".into(),
        ciphertext: vec![1, 2, 3, 250],
    };
    let json = serde_json::to_string(&key)?;
    assert_eq!(
        json,
        r#"{"tenant":"acme","version":3,"kek_id":"kek-01","ciphertext":"AQID+g=="}"#
    );
    assert_eq!(serde_json::from_str::<WrappedDataKey>(&json)?, key);
    Ok(())
}

/// The trait is object safe and works behind `Arc<dyn KeyProvider>`.
#[tokio::test]
async fn key_provider_is_usable_as_dyn() -> Result {
    let dir = tempfile::tempdir()?;
    let provider: Arc<dyn KeyProvider> = key_file(&dir)?;
    let (ring, _) = Keyring::create(provider.clone(), "acme").await?;
    let key = KeyMaterial::generate()?;
    let wrapped = provider.wrap(&key, b"aad").await?;
    assert_eq!(
        provider.unwrap(&wrapped, b"aad").await?.expose(),
        key.expose()
    );
    assert!(matches!(
        provider.unwrap(&wrapped, b"other").await,
        Err(Error::Unwrap { .. })
    ));
    assert_eq!(ring.open("c", &ring.seal("c", b"x")?)?.expose(), b"x");
    Ok(())
}
