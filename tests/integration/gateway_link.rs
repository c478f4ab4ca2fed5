//! The gateway's outbound link against a real control plane over real TLS on loopback:
//! enrollment, authentication, the channel handshake, and every kind of bad input the link
//! must refuse without a panic or a change of state.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tidegate::auth::IdentityKey;
use tidegate::dev_tls::ThrowawayCa;
use tidegate::gateway::{Error, Gateway, Identity, LinkState};
use tidegate::metadata::GatewayState;
use tidegate::proto::{ProtocolVersion, RefusalReason};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common;

use common::{Harness, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_gateway_goes_online_and_offline() {
    let h = Harness::start().await;
    let (id, config, identity) = h.enrolled("a").await;
    let meta = std::fs::metadata(Identity::path(&config.state_dir)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(h.gateway(&id).await.state, GatewayState::Active);

    let gateway = Gateway::start(config, identity).unwrap();
    let mut state = gateway.state();
    state.wait_for(|s| *s == LinkState::Online).await.unwrap();
    wait_for(async || h.gateway(&id).await.online).await;
    // Heartbeats keep it online across several intervals.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(h.gateway(&id).await.online);
    assert_eq!(*state.borrow(), LinkState::Online);
    gateway.shutdown().await;
    wait_for(async || !h.gateway(&id).await.online).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_token_is_single_use() {
    let h = Harness::start().await;
    let (id, token) = h.create_gateway().await;
    let first = tidegate::gateway::enroll(&h.config("a"), &token)
        .await
        .unwrap();
    let key_after_first = h.gateway(&id).await.public_key;
    let second = tidegate::gateway::enroll(&h.config("b"), &token).await;
    match second {
        Err(Error::Rejected {
            status: 401,
            message,
        }) => {
            assert!(message.contains("already used"), "{message}")
        }
        other => panic!("reused token was not refused: {other:?}"),
    }
    assert_eq!(h.gateway(&id).await.public_key, key_after_first);
    assert_eq!(
        key_after_first.as_deref(),
        Some(first.key.public_key().to_base64().as_str())
    );
    assert!(!Identity::path(&h.dir.path().join("b")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ws_is_refused_before_dialing() {
    let h = Harness::start().await;
    let (_, config, identity) = h.enrolled("a").await;
    let mut plain = config.clone();
    plain.control_plane = plain.control_plane.replace("wss://", "ws://");
    let err = Gateway::start(plain.clone(), identity).unwrap_err();
    assert!(err.to_string().contains("plain ws:// is refused"), "{err}");
    let err = tidegate::gateway::enroll(&plain, "tge_x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_server_certificate_and_wrong_pin_are_refused() {
    let h = Harness::start().await;
    let (id, config, identity) = h.enrolled("a").await;

    let stranger = ThrowawayCa::new(&["localhost"]).unwrap();
    let mut wrong_ca = config.clone();
    wrong_ca.tls.ca_bundle_pem = Some(stranger.ca_pem.clone());
    let err = tidegate::gateway::dial_once(&wrong_ca, &identity)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Tls(_)), "{err}");

    let mut wrong_pin = config.clone();
    wrong_pin.tls.pinned_sha256 = vec![[7; 32]];
    let err = tidegate::gateway::dial_once(&wrong_pin, &identity)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("pinned"), "{err}");
    assert!(!h.gateway(&id).await.online);

    // The right pin (SHA-256 of the leaf certificate's DER) is accepted.
    use rustls_pki_types::pem::PemObject;
    let leaf =
        rustls_pki_types::CertificateDer::from_pem_slice(h.ca.server_cert_pem.as_bytes()).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
    let mut right_pin = config.clone();
    right_pin.tls.pinned_sha256 = vec![digest.as_ref().try_into().unwrap()];
    tidegate::gateway::dial_once(&right_pin, &identity)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_version_is_refused_and_shown_deactivated() {
    let h = Harness::start().await;
    let (id, mut config, identity) = h.enrolled("a").await;
    config.protocol_versions = ProtocolVersion(7)..=ProtocolVersion(9);
    let err = tidegate::gateway::dial_once(&config, &identity)
        .await
        .err()
        .unwrap();
    match err {
        Error::Link(tidegate::link::Error::Refused(refusal)) => {
            assert!(matches!(
                refusal.reason,
                RefusalReason::UnsupportedVersion { .. }
            ));
        }
        other => panic!("not refused: {other}"),
    }
    // The control plane records the refusal once the handshake is over.
    wait_for(async || matches!(h.gateway(&id).await.state, GatewayState::Outdated { .. })).await;
    match h.gateway(&id).await.state {
        GatewayState::Outdated { reason } => {
            assert!(reason.contains("no longer supported"), "{reason}")
        }
        other => panic!("gateway not shown as deactivated: {other:?}"),
    }
    assert!(!h.gateway(&id).await.online);

    // Upgraded (it offers a supported version again), it is let in and active again.
    config.protocol_versions = tidegate::proto::SUPPORTED_VERSIONS;
    let (_link, _) = tidegate::gateway::dial_once(&config, &identity)
        .await
        .unwrap();
    wait_for(async || h.gateway(&id).await.state == GatewayState::Active).await;
}

/// Opens TLS to the control plane and returns the stream with its auth binding.
async fn raw_tls(
    h: &Harness,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    [u8; 32],
) {
    let config = h.config("raw").tls.client_config().unwrap();
    let tcp = tokio::net::TcpStream::connect(h.cp.local_addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let binding = tls
        .get_ref()
        .1
        .export_keying_material([0u8; 32], tidegate::auth::TLS_EXPORTER_LABEL, None)
        .unwrap();
    (tls, binding)
}

/// Tries the WebSocket upgrade with `authorization`; returns the HTTP status.
async fn upgrade_status(
    h: &Harness,
    authorization: impl FnOnce(&[u8; 32]) -> Option<String>,
) -> u16 {
    let (tls, binding) = raw_tls(h).await;
    let mut request = format!(
        "wss://localhost:{}/v1/gateway/connect",
        h.cp.local_addr().port()
    )
    .into_client_request()
    .unwrap();
    if let Some(value) = authorization(&binding) {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected upgrade failure: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gateway_tokens_are_refused_without_state_change() {
    let h = Harness::start().await;
    let (id, _config, identity) = h.enrolled("a").await;
    let other = IdentityKey::generate().unwrap();
    let now = tidegate::auth::now_s();
    let key = Arc::new(identity.key);
    type Mint = Box<dyn FnOnce(&[u8; 32]) -> Option<String>>;
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let id2 = id.clone();
    let k = key.clone();
    let cases: Vec<(&str, Mint)> = vec![
        ("no token", Box::new(|_| None)),
        ("not a JWT", Box::new(move |_| bearer("abc.def.ghi".into()))),
        ("forged with another key", {
            let id = id.clone();
            Box::new(move |b| bearer(other.mint_token(&id, "cp-test", b, now, 60).unwrap()))
        }),
        ("expired", {
            let (id, k) = (id.clone(), k.clone());
            Box::new(move |b| bearer(k.mint_token(&id, "cp-test", b, now - 400, 60).unwrap()))
        }),
        ("wrong audience", {
            let (id, k) = (id.clone(), k.clone());
            Box::new(move |b| bearer(k.mint_token(&id, "cp-other", b, now, 60).unwrap()))
        }),
        ("bound to another TLS session", {
            let (id, k) = (id.clone(), k.clone());
            Box::new(move |_| bearer(k.mint_token(&id, "cp-test", &[0; 32], now, 60).unwrap()))
        }),
        ("unknown gateway", {
            let k = k.clone();
            Box::new(move |b| bearer(k.mint_token("gw_unknown", "cp-test", b, now, 60).unwrap()))
        }),
        ("alg none", {
            let id = id.clone();
            Box::new(move |_| {
                use base64::Engine;
                let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let header = e.encode(format!(r#"{{"alg":"none","kid":"{id}"}}"#));
                let claims = e.encode(format!(
                    r#"{{"iss":"{id}","sub":"{id}","aud":"cp-test","iat":{now},"nbf":{now},"exp":{}}}"#,
                    now + 60
                ));
                bearer(format!("{header}.{claims}."))
            })
        }),
    ];
    for (name, mint) in cases {
        let status = upgrade_status(&h, mint).await;
        assert_eq!(status, 401, "{name}: got HTTP {status}");
        assert!(
            !h.gateway(&id2).await.online,
            "{name} brought the gateway online"
        );
    }
    // The same harness with a valid token upgrades: the refusals above are the tokens' fault.
    let k = key.clone();
    let status = upgrade_status(&h, move |b| {
        bearer(k.mint_token(&id2, "cp-test", b, now, 60).unwrap())
    })
    .await;
    assert_eq!(status, 101);
}

#[test]
fn tls_1_1_client_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(Harness::start());
    let mut hello = Vec::new();
    // ClientHello body: version TLS 1.1, random, no session, suites the server does support
    // (so that only the protocol version can be the reason to refuse), null compression.
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    hello.extend_from_slice(&[0x16, 0x03, 0x02, 0x00, handshake.len() as u8]);
    hello.extend_from_slice(&handshake);

    let mut tcp = std::net::TcpStream::connect(h.cp.local_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(!answer.is_empty(), "no answer");
    assert_eq!(
        answer[0], 0x15,
        "expected a TLS alert, got record type {}",
        answer[0]
    );
    // A fatal alert (level 2): protocol_version (70) or handshake_failure (40, what rustls
    // sends when it finds no TLS 1.2+ offer it can accept). Never a ServerHello.
    assert_eq!(answer[5], 2, "alert {:?}", &answer[..answer.len().min(7)]);
    assert!(
        [40, 70].contains(&answer[6]),
        "alert {:?}",
        &answer[..answer.len().min(7)]
    );
    drop(rt);
}

/// What `openssl s_client` (a real, independent TLS peer) makes of the control plane. The
/// client is told to accept anything (`@SECLEVEL=0`) so that every refusal is the server's,
/// except the host-name check, which only a client can make: it shows the certificate names
/// no other host.
#[test]
fn openssl_sees_tls_1_2_and_1_3_only_with_strong_suites_and_the_right_name() {
    let Ok(openssl) = which("openssl") else {
        panic!("openssl is not installed; the test command installs it (apt package openssl)");
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(Harness::start());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &h.ca.ca_pem).unwrap();
    let address = format!("127.0.0.1:{}", h.cp.local_addr().port());
    let s_client = |args: &[&str]| {
        let output = std::process::Command::new(&openssl)
            .args(["s_client", "-connect", &address, "-servername", "localhost"])
            .args(["-CAfile", ca.to_str().unwrap(), "-verify_return_error"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &*String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(&[version, "-verify_hostname", "localhost"]);
        assert!(ok, "{version} refused:\n{text}");
        assert!(text.contains(&format!("New, {name}, Cipher is")), "{text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    }
    for (what, args) in [
        ("TLS 1.0", &["-tls1", "-cipher", "ALL:@SECLEVEL=0"][..]),
        ("TLS 1.1", &["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"]),
        // CBC, SHA-1 MACs, RSA key exchange, 3DES, RC4, export and null suites.
        (
            "weak TLS 1.2 suites",
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:\
                 AES128-SHA:AES256-GCM-SHA384:DES-CBC3-SHA:RC4-SHA:NULL-SHA:EXP-RC4-MD5:\
                 @SECLEVEL=0",
            ],
        ),
    ] {
        let (ok, text) = s_client(args);
        assert!(!ok, "{what} accepted:\n{text}");
        // No session: the server answered the offer with an alert.
        assert!(
            text.contains("New, (NONE), Cipher is (NONE)"),
            "{what}: {text}"
        );
        assert!(text.contains("alert"), "{what}: {text}");
    }
    let (ok, text) = s_client(&["-verify_hostname", "tidegate.example.com"]);
    assert!(!ok, "a wrong host name was accepted:\n{text}");
    assert!(text.contains("hostname mismatch"), "{text}");
    drop(rt);
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keeps_credentials_in_memory_only() {
    let h = Harness::start().await;
    let started = std::time::SystemTime::now();
    let (id, config, identity) = h.enrolled("state").await;
    let gateway = Gateway::start(config.clone(), identity).unwrap();
    gateway
        .state()
        .wait_for(|s| *s == LinkState::Online)
        .await
        .unwrap();

    let canary = format!("canary-secret-{}", uuid_like());
    let source = h.dir.path().join("src.sqlite");
    tidegate::replicate::sample::generate_sqlite(
        &source,
        tidegate::replicate::sample::SampleSize::rows(2_000),
    )
    .await
    .unwrap();
    let out = h.dir.path().join("out");
    let (src, _, task) = h
        .create_task(
            &id,
            json!({"name": "src", "kind": "sqlite", "settings": {"path": source.display().to_string()},
                   "secrets": {"password": canary}}),
            json!({"name": "dst", "kind": "local", "settings": {"root": out.display().to_string()}}),
        )
        .await;
    assert_eq!(src["secret_names"], json!(["password"]));
    assert!(!src.to_string().contains(&canary), "API echoed a secret");
    let finished = h.run_to_end(task["id"].as_str().unwrap()).await;
    assert_eq!(finished["state"], json!("Completed"), "{finished}");
    let listed = h.api.get("/api/v1/connections").await.unwrap();
    assert!(!listed.to_string().contains(&canary));
    gateway.shutdown().await;

    // The state directory holds the identity file and nothing else.
    let entries: Vec<_> = std::fs::read_dir(&config.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        entries,
        vec![tidegate::gateway::identity::IDENTITY_FILE.to_owned()]
    );
    // No file the run could have written holds the credential.
    for dir in [config.state_dir.clone(), out.clone(), std::env::temp_dir()] {
        scan_for(&dir, canary.as_bytes(), started, 3);
    }
}

fn uuid_like() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fails if any regular file under `dir` modified since `since` contains `needle`.
fn scan_for(dir: &Path, needle: &[u8], since: std::time::SystemTime, depth: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() && depth > 0 {
            scan_for(&path, needle, since, depth - 1);
        } else if meta.is_file()
            && meta.len() < 64 << 20
            && meta.modified().is_ok_and(|m| m >= since)
            && let Ok(bytes) = std::fs::read(&path)
        {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the credential",
                path.display()
            );
        }
    }
}

/// A minimal HTTP CONNECT proxy on loopback (the real protocol, just no caching or policy):
/// tunnels to loopback targets only, counts the tunnels it opened and can cut them all.
struct Proxy {
    addr: std::net::SocketAddr,
    tunnels: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, handles) = (tunnels.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let count = count.clone();
                let task = tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        head.push(client.read_u8().await.unwrap());
                    }
                    let head = String::from_utf8(head).unwrap();
                    let target = head
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap()
                        .to_owned();
                    let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
                    let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .unwrap();
                    client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                handles.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            tunnels,
            open,
        }
    }

    fn tunnels(&self) -> usize {
        self.tunnels.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops every open tunnel, as a failing network path would.
    fn cut(&self) {
        for handle in self.open.lock().unwrap().drain(..) {
            handle.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_and_link_go_through_an_http_connect_proxy_and_survive_a_cut() {
    let h = Harness::start().await;
    let proxy = Proxy::start().await;
    let (id, token) = h.create_gateway().await;
    let mut config = h.config("a");
    config.proxy = Some(format!("http://{}", proxy.addr));
    let identity = tidegate::gateway::enroll(&config, &token).await.unwrap();
    let after_enroll = proxy.tunnels();
    assert!(after_enroll >= 1, "enrollment bypassed the proxy");
    let gateway = Gateway::start(config, identity).unwrap();
    let mut state = gateway.state();
    state.wait_for(|s| *s == LinkState::Online).await.unwrap();
    assert!(proxy.tunnels() > after_enroll);
    wait_for(async || h.gateway(&id).await.online).await;
    // Metrics reach the control plane as counts only.
    wait_for(async || h.gateway(&id).await.metrics.is_some()).await;

    // Cut the path: the gateway notices, backs off, dials again through the proxy.
    let before_cut = proxy.tunnels();
    proxy.cut();
    state
        .wait_for(|s| matches!(s, LinkState::Offline { .. } | LinkState::Connecting))
        .await
        .unwrap();
    state.wait_for(|s| *s == LinkState::Online).await.unwrap();
    assert!(
        proxy.tunnels() > before_cut,
        "reconnected without the proxy"
    );
    wait_for(async || h.gateway(&id).await.online).await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_hello_closes_the_link() {
    use futures::{SinkExt, StreamExt};
    let h = Harness::start().await;
    let (id, _config, identity) = h.enrolled("a").await;
    let (tls, binding) = raw_tls(&h).await;
    let token = identity
        .key
        .mint_token(&id, "cp-test", &binding, tidegate::auth::now_s(), 60)
        .unwrap();
    let mut request = format!(
        "wss://localhost:{}/v1/gateway/connect",
        h.cp.local_addr().port()
    )
    .into_client_request()
    .unwrap();
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    // A length prefix far above the maximum, then junk.
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        0xff, 0xff, 0xff, 0xff, 1, 2, 3,
    ]))
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("control plane kept the connection open");
    assert!(
        matches!(
            next,
            None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
        ),
        "unexpected answer: {next:?}"
    );
    assert!(!h.gateway(&id).await.online);
}
