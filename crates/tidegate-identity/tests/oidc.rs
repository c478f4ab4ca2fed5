//! OpenID Connect login against a real provider (npm's `oidc-provider`, run by Node.js on
//! loopback): discovery, authorization code with PKCE, ID-token validation, claim mapping, and
//! the ways a login must fail.

#![allow(clippy::unwrap_used)]

use tidegate_identity::Error;
use tidegate_identity::Zeroizing;
use tidegate_identity::oidc::{OidcConfig, OidcLogin, PendingLogins, UsernameClaim};
use tidegate_testkit::OidcProvider;

const REDIRECT: &str = "http://127.0.0.1:9/oidc/callback";

async fn provider() -> OidcProvider {
    tokio::task::spawn_blocking(|| OidcProvider::start(&[REDIRECT]))
        .await
        .unwrap()
        .unwrap()
}

fn config(provider: &OidcProvider, claim: UsernameClaim) -> OidcConfig {
    let mut config = OidcConfig::new(provider.issuer(), OidcProvider::CLIENT_ID, REDIRECT);
    config.client_secret = Some(Zeroizing::new(OidcProvider::CLIENT_SECRET.to_owned()));
    config.username_claim = claim;
    config
}

/// Plays the browser: logs `login` in at the provider and returns `(code, state)`.
async fn browser(provider: &OidcProvider, url: String, login: &str) -> (String, String) {
    // The login runs Node.js and waits for it.
    let landed = tokio::task::block_in_place(|| provider.authorize(&url, login)).unwrap();
    assert!(landed.starts_with(REDIRECT), "{landed}");
    let url = url::Url::parse(&landed).unwrap();
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in {landed}"))
    };
    (param("code"), param("state"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_yields_the_verified_identity_once() {
    let provider = provider().await;
    let login = OidcLogin::discover(config(&provider, UsernameClaim::Email))
        .await
        .unwrap();
    let pending = PendingLogins::default();
    let (url, started) = login.begin();
    assert!(url.contains("code_challenge_method=S256"), "PKCE: {url}");
    assert!(url.contains("nonce="), "{url}");
    pending.insert(started).unwrap();

    let (code, state) = browser(&provider, url, "alice").await;
    let started = pending.take(&state).expect("pending under its state");
    let identity = login.finish(started, &code).await.unwrap();
    assert_eq!(identity.issuer, provider.issuer());
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.username, "alice@example.test");
    assert_eq!(identity.name.as_deref(), Some("Test user alice"));

    // The state is taken once; a replayed callback finds nothing.
    assert!(pending.take(&state).is_none());
    assert!(pending.take("forged-state").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_does_not_redeem_twice_or_with_another_login() {
    let provider = provider().await;
    let login = OidcLogin::discover(config(&provider, UsernameClaim::Subject))
        .await
        .unwrap();
    let (url_a, pending_a) = login.begin();
    let (_url_b, pending_b) = login.begin();
    let (code, _) = browser(&provider, url_a, "carol").await;

    // Another login's PKCE verifier and nonce: the provider refuses the code.
    let error = login.finish(pending_b, &code).await.unwrap_err();
    assert!(matches!(error, Error::OidcLogin(_)), "{error}");
    assert!(!error.to_string().contains(&code), "the code is not echoed");

    // The code was consumed by that attempt or is still good once; never twice.
    let first = login.finish(pending_a, &code).await;
    let (_, pending_c) = login.begin();
    let second = login.finish(pending_c, &code).await;
    assert!(second.is_err(), "a code redeems at most once");
    if let Ok(identity) = first {
        assert_eq!(identity.username, "carol");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_username_claim_is_mapped_and_unverified_email_refused() {
    let provider = provider().await;
    let by_email = OidcLogin::discover(config(&provider, UsernameClaim::Email))
        .await
        .unwrap();
    let (url, pending) = by_email.begin();
    let (code, _) = browser(&provider, url, "unverified-bob").await;
    let error = by_email.finish(pending, &code).await.unwrap_err();
    assert!(error.to_string().contains("not verified"), "{error}");

    let by_name = OidcLogin::discover(config(&provider, UsernameClaim::PreferredUsername))
        .await
        .unwrap();
    let (url, pending) = by_name.begin();
    let (code, _) = browser(&provider, url, "unverified-bob").await;
    let identity = by_name.finish(pending, &code).await.unwrap();
    assert_eq!(identity.username, "unverified-bob");
    assert_eq!(
        identity.email.as_deref(),
        Some("unverified-bob@example.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_fails_without_repeating_it() {
    let provider = provider().await;
    let mut wrong = config(&provider, UsernameClaim::Subject);
    wrong.client_secret = Some(Zeroizing::new("wrong-secret-canary".to_owned()));
    let login = OidcLogin::discover(wrong).await.unwrap();
    let (url, pending) = login.begin();
    let (code, _) = browser(&provider, url, "dave").await;
    let error = login.finish(pending, &code).await.unwrap_err().to_string();
    assert!(error.contains("code exchange failed"), "{error}");
    assert!(!error.contains("wrong-secret-canary"), "{error}");
    assert!(!format!("{login:?}").contains("wrong-secret-canary"));
}

#[tokio::test]
async fn bad_configuration_is_refused_clearly() {
    let cases = [
        ("http://idp.example.com", REDIRECT, "issuer must be https"),
        (
            "https://idp.example.com",
            "http://app.example.com/cb",
            "redirect_url must be https",
        ),
        ("not a url", REDIRECT, "issuer"),
    ];
    for (issuer, redirect, expected) in cases {
        let error = OidcLogin::discover(OidcConfig::new(issuer, "client", redirect))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{issuer}: {error}");
    }
    // Nothing listens there: a provider error naming the issuer.
    let port = tidegate_testkit::free_port().unwrap();
    let issuer = format!("http://127.0.0.1:{port}");
    let error = OidcLogin::discover(OidcConfig::new(&issuer, "client", REDIRECT))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&issuer) && error.contains("discovery failed"),
        "{error}"
    );
}
