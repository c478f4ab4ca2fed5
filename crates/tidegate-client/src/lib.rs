//! A client for the Tidegate control plane's REST API (`/api/v1`), used by the `tidegate` CLI,
//! the examples and the tests, and usable from any Rust service.
//!
//! [`Client`] speaks HTTPS only (TLS 1.2 and 1.3 on rustls), trusting the system's roots or
//! the CA given, and sends a bearer token: a login session token or an operator token. Every
//! call returns the JSON answer; a non-2xx answer becomes [`Error::Api`] with the control
//! plane's error code and message. The token never appears in `Debug` output or errors.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use zeroize::Zeroizing;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be configured (URL, CA file, TLS).
    #[error("client configuration: {0}")]
    Config(String),
    /// The control plane could not be reached, or its answer could not be read.
    #[error("{method} {path}: {reason}")]
    Transport {
        /// The HTTP method.
        method: &'static str,
        /// The path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The control plane refused the request.
    #[error("{method} {path}: HTTP {status} {code}: {message}")]
    Api {
        /// The HTTP method.
        method: &'static str,
        /// The path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The control plane's error code (`forbidden`, `not_found`, ...).
        code: String,
        /// The control plane's message.
        message: String,
    },
}

impl Error {
    /// The HTTP status of an API refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one control plane.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Arc<Zeroizing<String>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client for the control plane at `base_url` (`https://host:port`), trusting the system's
    /// roots, plus `ca_pem` when given (a private CA).
    ///
    /// Uses the process's default rustls crypto provider, or aws-lc-rs when none is installed.
    pub fn new(base_url: &str, ca_pem: Option<&str>) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            return Err(Error::Config(format!(
                "the control plane URL must start with https:// (got {base_url:?})"
            )));
        }
        let http = http_client(ca_pem)?;
        Ok(Self {
            http,
            base,
            token: None,
        })
    }

    /// The same client sending `token` as its bearer token.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(Arc::new(Zeroizing::new(token.to_owned())));
        self
    }

    /// The control plane's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.call(reqwest::Method::GET, "GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.call(reqwest::Method::POST, "POST", path, Some(body))
            .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.call(reqwest::Method::PATCH, "PATCH", path, Some(body))
            .await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.call(reqwest::Method::PUT, "PUT", path, Some(body))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, Error> {
        self.call(reqwest::Method::DELETE, "DELETE", path, None)
            .await
    }

    /// `GET path` returning the body as text (JSON-lines exports).
    pub async fn get_text(&self, path: &str) -> Result<String, Error> {
        let response = self.send(reqwest::Method::GET, "GET", path, None).await?;
        response.text().await.map_err(|e| transport("GET", path, e))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        name: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let response = self.send(method, name, path, body).await?;
        let text = response
            .text()
            .await
            .map_err(|e| transport(name, path, e))?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| Error::Transport {
            method: name,
            path: path.to_owned(),
            reason: format!("the answer is not JSON: {e}"),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        name: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, Error> {
        if !path.starts_with('/') {
            return Err(Error::Config(format!("path {path:?} must start with /")));
        }
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.as_str());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| transport(name, path, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |name: &str| {
            error["error"][name]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_default()
        };
        Err(Error::Api {
            method: name,
            path: path.to_owned(),
            status: status.as_u16(),
            code: field("code"),
            message: field("message"),
        })
    }
}

/// An HTTP client on rustls (TLS 1.2 and 1.3; the process's default crypto provider, or
/// aws-lc-rs) that trusts the system's roots plus the certificates of `ca_pem`, follows no
/// redirects and gives up after 30 s. Plain `http://` URLs still work (for loopback test
/// servers); [`Client`] itself insists on `https://`.
pub fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        use rustls_pki_types::pem::PemObject;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Config("the CA PEM holds no certificate".into()));
        }
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

fn transport(method: &'static str, path: &str, error: reqwest::Error) -> Error {
    Error::Transport {
        method,
        path: path.to_owned(),
        reason: error_chain(&error.without_url()),
    }
}

/// An error and its causes on one line, `outer: cause: root cause`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
