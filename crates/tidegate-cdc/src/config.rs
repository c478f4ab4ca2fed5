//! Where and how to connect: a PostgreSQL URL in the form the full-load source takes.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// How TLS is negotiated, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, the certificate chain checked against the roots.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" => Self::Disable,
            // libpq's `allow` tries without TLS first; without TLS is what it gets here.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => {
                return Err(Error::InvalidConfig {
                    reason: "sslmode must be disable, allow, prefer, require, verify-ca or verify-full",
                });
            }
        })
    }
}

/// How to reach the server: host, port, user, password, database and TLS.
///
/// Parse it from `postgres://user:password@host:port/database?sslmode=…&sslrootcert=…`
/// ([`ConnectConfig::from_url`]); `application_name` and `connect_timeout` (seconds) are read
/// from the query too, other parameters are ignored. The password is wiped from memory when
/// the config drops, and neither `Debug` nor any error shows it.
#[derive(Clone)]
pub struct ConnectConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port. Default 5432.
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    password: Zeroizing<String>,
    /// The database.
    pub database: String,
    /// TLS negotiation.
    pub ssl_mode: SslMode,
    /// PEM file of the roots to check the server's certificate against; the system's roots
    /// when `None`.
    pub ssl_root_cert: Option<PathBuf>,
    /// The roots as PEM text, for callers that hold them in memory (a gateway keeps nothing
    /// on disk); used instead of [`ssl_root_cert`](Self::ssl_root_cert) when set.
    pub ssl_root_cert_pem: Option<Vec<u8>>,
    /// Shown in `pg_stat_activity` and `pg_stat_replication`. Default `tidegate`.
    pub application_name: String,
    /// How long connecting (TCP, TLS and authentication) may take. Default 30 s.
    pub connect_timeout: Duration,
    /// The largest server message accepted, so a corrupt length cannot make us allocate
    /// gigabytes. One replicated row arrives in one message. Default 256 MiB.
    pub max_message_bytes: usize,
}

impl fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("server", &self.server_label())
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_root_cert_pem", &self.ssl_root_cert_pem.is_some())
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

impl ConnectConfig {
    /// Parses a `postgres://` (or `postgresql://`) URL. A URL that does not parse is refused
    /// without repeating it (it may hold a password).
    pub fn from_url(text: &str) -> Result<Self> {
        const BAD_URL: Error = Error::InvalidConfig {
            reason: "the PostgreSQL URL does not parse (expected postgres://user:password@host:port/database)",
        };
        let url = url::Url::parse(text).map_err(|_| BAD_URL)?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(BAD_URL);
        }
        let decode = |part: &str| {
            percent_decode_str(part)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| BAD_URL)
        };
        let host = match url.host() {
            Some(url::Host::Domain(name)) => decode(name)?,
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            None => return Err(BAD_URL),
        };
        let user = decode(url.username())?;
        if user.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "the PostgreSQL URL names no user",
            });
        }
        let password = Zeroizing::new(decode(url.password().unwrap_or(""))?);
        let database = decode(url.path().trim_start_matches('/'))?;
        let database = if database.is_empty() {
            user.clone()
        } else {
            database
        };
        let mut config = Self::new(host, url.port().unwrap_or(5432), user, database);
        config.password = password;
        for (key, value) in url.query_pairs() {
            match &*key {
                "sslmode" => config.ssl_mode = value.parse()?,
                "sslrootcert" => config.ssl_root_cert = Some(PathBuf::from(&*value)),
                "application_name" => config.application_name = value.into_owned(),
                "connect_timeout" => {
                    let seconds: u64 = value.parse().map_err(|_| Error::InvalidConfig {
                        reason: "connect_timeout must be a whole number of seconds",
                    })?;
                    config.connect_timeout = Duration::from_secs(seconds.max(1));
                }
                _ => {}
            }
        }
        Ok(config)
    }

    /// A config for `user` on `host:port/database` without a password, with the defaults
    /// [`from_url`](Self::from_url) uses (`sslmode=prefer`).
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            password: Zeroizing::new(String::new()),
            database: database.into(),
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            ssl_root_cert_pem: None,
            application_name: "tidegate".to_owned(),
            connect_timeout: Duration::from_secs(30),
            max_message_bytes: 256 << 20,
        }
    }

    /// Replaces the password.
    pub fn with_password(mut self, password: &str) -> Self {
        self.password = Zeroizing::new(password.to_owned());
        self
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// `host:port/database`, for errors and logs (never the credentials).
    pub fn server_label(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }

    /// Options for an ordinary (non-replication) connection through sqlx to the same server,
    /// for publications, slot look-ups and the type catalog.
    pub fn sqlx_options(&self) -> PgConnectOptions {
        let ssl_mode = match self.ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        };
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .password(&self.password)
            .database(&self.database)
            .ssl_mode(ssl_mode)
            .application_name(&self.application_name);
        if let Some(pem) = &self.ssl_root_cert_pem {
            options = options.ssl_root_cert_from_pem(pem.clone());
        } else if let Some(root) = &self.ssl_root_cert {
            options = options.ssl_root_cert(root);
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_url_forms_the_full_load_takes() {
        let config = ConnectConfig::from_url(
            "postgres://re%40der:p%3Ass@db.example:6543/sales?sslmode=verify-full&sslrootcert=/ca.pem&application_name=cdc",
        )
        .unwrap();
        assert_eq!(config.host, "db.example");
        assert_eq!(config.port, 6543);
        assert_eq!(config.user, "re@der");
        assert_eq!(config.password(), "p:ss");
        assert_eq!(config.database, "sales");
        assert_eq!(config.ssl_mode, SslMode::VerifyFull);
        assert_eq!(config.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(config.application_name, "cdc");

        let config = ConnectConfig::from_url("postgresql://u@[::1]").unwrap();
        assert_eq!((config.host.as_str(), config.port), ("::1", 5432));
        assert_eq!(config.database, "u");
        assert_eq!(config.ssl_mode, SslMode::Prefer);
    }

    #[test]
    fn refuses_bad_urls_without_echoing_them() {
        for url in [
            "mysql://u:secret-pw@h/db",
            "postgres://:secret-pw@h/db",
            "not a url secret-pw",
            "postgres://u:secret-pw@h/db?sslmode=sometimes",
        ] {
            let error = ConnectConfig::from_url(url).unwrap_err().to_string();
            assert!(!error.contains("secret-pw"), "{error}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let config = ConnectConfig::from_url("postgres://u:secret-pw@h/db").unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret-pw"), "{debug}");
        assert!(debug.contains("h:5432/db"), "{debug}");
    }
}
