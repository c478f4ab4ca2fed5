//! OpenID Connect login: authorization code flow with PKCE.
//!
//! [`OidcLogin::discover`] reads the provider's discovery document and keys. [`OidcLogin::begin`]
//! returns the URL to send the browser to and a [`PendingLogin`] (state, nonce, PKCE verifier)
//! that the control plane keeps server-side in [`PendingLogins`], keyed by state, for at most
//! [`PENDING_TTL`]. When the browser comes back, [`OidcLogin::finish`] takes the pending login
//! by state (once), exchanges the code with the PKCE verifier, validates the ID token
//! (signature against the provider's keys, issuer, audience, expiry, nonce, and the access-token
//! hash when present) and maps the configured claim to a user name.
//!
//! The HTTP client follows no redirects (a redirecting provider could otherwise point token
//! requests anywhere) and trusts the system's roots plus an optional private CA. `http://`
//! issuers are accepted only on loopback.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreTokenResponse,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;

/// How long a started login may take before its state is forgotten.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Most logins pending at once; more are refused rather than grow memory without bound.
pub const MAX_PENDING: usize = 10_000;

/// Which ID-token claim names the Tidegate user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UsernameClaim {
    /// `sub`: stable and unique per provider, but opaque.
    Subject,
    /// `email`, only when the provider marks it verified (`email_verified: true`).
    #[default]
    Email,
    /// `preferred_username`: readable; the provider must guarantee it is unique and stable.
    PreferredUsername,
}

/// How to talk to one OpenID provider.
#[derive(Clone)]
pub struct OidcConfig {
    /// The issuer URL; discovery is read from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client id registered with the provider.
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<Zeroizing<String>>,
    /// Where the provider sends the browser back (the control plane's callback route).
    pub redirect_url: String,
    /// Scopes beyond `openid`. Default: `email`, `profile`.
    pub scopes: Vec<String>,
    /// The claim that names the user.
    pub username_claim: UsernameClaim,
    /// Extra trusted root certificates (PEM), for a provider under a private CA.
    pub ca_pem: Option<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["email".into(), "profile".into()]
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("username_claim", &self.username_claim)
            .finish_non_exhaustive()
    }
}

impl OidcConfig {
    /// A configuration with default scopes and the verified `email` as user name.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        redirect_url: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: None,
            redirect_url: redirect_url.into(),
            scopes: default_scopes(),
            username_claim: UsernameClaim::default(),
            ca_pem: None,
        }
    }
}

/// A user the provider vouched for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OidcIdentity {
    /// The issuer.
    pub issuer: String,
    /// The provider's subject identifier: with the issuer, the stable key of the identity.
    pub subject: String,
    /// The user name taken from the configured claim.
    pub username: String,
    /// The e-mail address, if the provider sent one.
    pub email: Option<String>,
    /// The display name, if the provider sent one.
    pub name: Option<String>,
}

/// A login between [`OidcLogin::begin`] and [`OidcLogin::finish`]. Holds secrets: keep it on the
/// server, never in the browser.
pub struct PendingLogin {
    state: CsrfToken,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    started: Instant,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingLogin(<redacted>)")
    }
}

impl PendingLogin {
    /// The state value, the key under which it is kept.
    pub fn state(&self) -> &str {
        self.state.secret()
    }
}

/// The logins in progress, by state; each is taken at most once.
#[derive(Debug, Default)]
pub struct PendingLogins {
    pending: Mutex<HashMap<String, PendingLogin>>,
}

impl PendingLogins {
    /// Keeps a pending login. Expired ones are dropped first; beyond [`MAX_PENDING`] the login is
    /// refused.
    pub fn insert(&self, login: PendingLogin) -> Result<(), Error> {
        let mut pending = self.pending.lock().expect("pending logins poisoned");
        pending.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if pending.len() >= MAX_PENDING {
            return Err(Error::OidcLogin(
                "too many logins in progress; try again later".into(),
            ));
        }
        pending.insert(login.state().to_owned(), login);
        Ok(())
    }

    /// Takes the pending login with this state, if it exists and has not expired.
    pub fn take(&self, state: &str) -> Option<PendingLogin> {
        let login = self
            .pending
            .lock()
            .expect("pending logins poisoned")
            .remove(state)?;
        (login.started.elapsed() < PENDING_TTL).then_some(login)
    }
}

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A relying party for one provider, ready after discovery.
pub struct OidcLogin {
    config: OidcConfig,
    client: Client,
    http: reqwest::Client,
}

impl std::fmt::Debug for OidcLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcLogin")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OidcLogin {
    /// Reads the provider's discovery document and signing keys.
    pub async fn discover(config: OidcConfig) -> Result<Self, Error> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| Error::OidcConfig(format!("issuer: {e}")))?;
        require_https_or_loopback("issuer", issuer.url())?;
        let redirect = RedirectUrl::new(config.redirect_url.clone())
            .map_err(|e| Error::OidcConfig(format!("redirect_url: {e}")))?;
        require_https_or_loopback("redirect_url", redirect.url())?;
        let http = http_client(config.ca_pem.as_deref())?;
        let provider = |reason: String| Error::OidcProvider {
            issuer: config.issuer.clone(),
            reason,
        };
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| {
                provider(format!(
                    "discovery failed: {}",
                    tidegate_client::error_chain(&e)
                ))
            })?;
        if metadata.token_endpoint().is_none() {
            return Err(provider("the provider has no token endpoint".into()));
        }
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            config
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.as_str().to_owned())),
        )
        .set_redirect_uri(redirect);
        Ok(Self {
            config,
            client,
            http,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Starts a login: the URL to send the browser to and the pending login to keep.
    pub fn begin(&self) -> (String, PendingLogin) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let pending = PendingLogin {
            state,
            nonce,
            verifier,
            started: Instant::now(),
        };
        (url.to_string(), pending)
    }

    /// Completes a login: exchanges `code` for tokens and validates the ID token against the
    /// pending login (whose state the caller looked it up by).
    pub async fn finish(&self, pending: PendingLogin, code: &str) -> Result<OidcIdentity, Error> {
        let refused = |what: String| Error::OidcLogin(what);
        let token: CoreTokenResponse = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| refused(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| {
                refused(format!(
                    "code exchange failed: {}",
                    tidegate_client::error_chain(&e)
                ))
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| refused("the provider returned no ID token".into()))?;
        let verifier = self.client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &pending.nonce)
            .map_err(|e| refused(format!("ID token invalid: {e}")))?;
        if let Some(expected) = claims.access_token_hash() {
            let algorithm = id_token
                .signing_alg()
                .map_err(|e| refused(format!("ID token invalid: {e}")))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| refused(format!("ID token invalid: {e}")))?;
            let actual = AccessTokenHash::from_token(token.access_token(), algorithm, key)
                .map_err(|e| refused(format!("ID token invalid: {e}")))?;
            if actual != *expected {
                return Err(refused(
                    "the access token does not match the ID token".into(),
                ));
            }
        }
        let email = claims.email().map(|e| e.as_str().to_owned());
        let username = match self.config.username_claim {
            UsernameClaim::Subject => Some(claims.subject().as_str().to_owned()),
            UsernameClaim::Email => {
                if claims.email_verified() == Some(true) {
                    email.clone()
                } else {
                    return Err(refused("the e-mail address is not verified".into()));
                }
            }
            UsernameClaim::PreferredUsername => {
                claims.preferred_username().map(|u| u.as_str().to_owned())
            }
        }
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            refused(format!(
                "the ID token has no {:?} claim to name the user",
                self.config.username_claim
            ))
        })?;
        Ok(OidcIdentity {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            username,
            email,
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned()),
        })
    }
}

fn require_https_or_loopback(field: &str, url: &url::Url) -> Result<(), Error> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if url.scheme() == "https" || (url.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(Error::OidcConfig(format!(
            "{field} must be https (http only on loopback)"
        )))
    }
}

/// An HTTP client without redirects, on the process's rustls provider, trusting the system's
/// roots and `ca_pem`.
fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client, Error> {
    tidegate_client::http_client(ca_pem).map_err(|e| Error::OidcConfig(e.to_string()))
}
