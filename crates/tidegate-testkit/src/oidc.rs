//! A throwaway OpenID Connect provider: the `oidc-provider` package from npm, run by Node.js.
//!
//! The package is installed once into a cache directory (`TIDEGATE_OIDC_PROVIDER_DIR`, default
//! `~/.cache/tidegate-testkit/oidc-provider`) with `npm install`. The provider serves one
//! confidential client, requires PKCE, and treats any login name as an account whose claims
//! derive from the name (`sub` = name, `email` = `<name>@example.test`, verified unless the name
//! starts with `unverified-`). [`OidcProvider::authorize`] plays the user in a browser.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, wait_for_port};

/// The npm package, pinned.
const PACKAGE: &str = "oidc-provider@9.13.3";
const PROVIDER_SCRIPT: &str = include_str!("../assets/oidc-provider.mjs");
const LOGIN_SCRIPT: &str = include_str!("../assets/oidc-login.mjs");

/// An OpenID provider on `127.0.0.1`, killed when dropped.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    port: u16,
    scripts: tempfile::TempDir,
}

impl OidcProvider {
    /// The client id the provider knows.
    pub const CLIENT_ID: &'static str = "tidegate-control-plane";
    /// That client's secret.
    pub const CLIENT_SECRET: &'static str = "tidegate-test-client-secret";

    /// Installs the package if needed and starts a provider that accepts `redirect_uris`.
    pub fn start(redirect_uris: &[&str]) -> io::Result<Self> {
        let module = install()?;
        let scripts = tempfile::tempdir()?;
        fs::write(scripts.path().join("provider.mjs"), PROVIDER_SCRIPT)?;
        fs::write(scripts.path().join("login.mjs"), LOGIN_SCRIPT)?;
        let uris = format!(
            "[{}]",
            redirect_uris
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let port = free_port()?;
        let child = Command::new("node")
            .arg(scripts.path().join("provider.mjs"))
            .env("OIDC_PROVIDER_MODULE", &module)
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_CLIENT_ID", Self::CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", Self::CLIENT_SECRET)
            .env("OIDC_REDIRECT_URIS", uris)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut provider = Self {
            child,
            port,
            scripts,
        };
        if let Err(error) = wait_for_port(port, Duration::from_secs(30)) {
            let _ = provider.child.kill();
            return Err(error);
        }
        Ok(provider)
    }

    /// The issuer URL, `http://127.0.0.1:<port>` (discovery below it).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Logs `login` in through the provider's login and consent pages, starting at an
    /// authorization URL, and returns the URL the provider finally redirects the browser to
    /// (the relying party's redirect URI with `code` and `state`, or with `error`).
    pub fn authorize(&self, authorization_url: &str, login: &str) -> io::Result<String> {
        let out = Command::new("node")
            .arg(self.scripts.path().join("login.mjs"))
            .args([authorization_url, login])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "browser login failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The package's entry module, installing it first when missing. Concurrent callers (tests in
/// parallel processes) serialize on a lock directory.
fn install() -> io::Result<PathBuf> {
    let dir = match std::env::var_os("TIDEGATE_OIDC_PROVIDER_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").ok_or_else(|| io::Error::other("HOME is not set"))?;
            Path::new(&home).join(".cache/tidegate-testkit/oidc-provider")
        }
    };
    let module = dir.join("node_modules/oidc-provider/lib/index.js");
    if module.exists() {
        return Ok(module);
    }
    fs::create_dir_all(&dir)?;
    let lock = dir.join(".installing");
    let deadline = Instant::now() + Duration::from_secs(300);
    while fs::create_dir(&lock).is_err() {
        if module.exists() {
            return Ok(module);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "timed out waiting for {} (remove it if no install runs)",
                lock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = if module.exists() {
        Ok(())
    } else {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(PACKAGE)
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(io::Error::other(format!("npm install {PACKAGE}: {status}"))),
            Err(error) => Err(io::Error::new(
                error.kind(),
                format!("running npm (install Node.js 20 or later): {error}"),
            )),
        }
    };
    let _ = fs::remove_dir(&lock);
    result.map(|()| module)
}
