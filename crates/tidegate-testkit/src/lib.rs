//! Throwaway servers for Tidegate's tests and benchmarks, all on loopback.
//!
//! * [`PgServer`]: a real PostgreSQL cluster in a temporary directory, on a free port, with
//!   password (SCRAM) authentication over TCP and `wal_level = logical`. PostgreSQL refuses to
//!   run as root, so when the tests run as root the cluster runs as the `postgres` system user.
//! * [`S3Server`]: a real S3-compatible server (moto's server mode) on a free port.
//! * [`OidcProvider`]: a real OpenID Connect provider (npm's `oidc-provider`, run by Node.js).
//! * [`lineitem_sql`]: a TPC-H-like `lineitem` table generated inside PostgreSQL.
//!
//! Nothing here is a mock: each server is the real program, started and stopped by its guard.
//! Dropping a guard stops the server and removes its files.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod lineitem;
mod oidc;
mod pg;
mod s3;

pub use crate::lineitem::lineitem_sql;
pub use crate::oidc::OidcProvider;
pub use crate::pg::PgServer;
pub use crate::s3::S3Server;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A TCP port on loopback that was free a moment ago.
///
/// Another process can take it before the caller binds it; callers retry on failure.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
fn wait_for_port(port: u16, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing listens on port {port} after {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when this process runs as root (uid 0).
fn running_as_root() -> bool {
    // `id -u` avoids unsafe code for `getuid`.
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}
