//! A throwaway PostgreSQL cluster.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use crate::{free_port, running_as_root};

/// The role the cluster is created with; it is the superuser.
const USER: &str = "tidegate";
/// Its password. Tests only: the cluster listens on loopback and lives for one test.
const PASSWORD: &str = "tidegate-test-password";

/// A PostgreSQL cluster in a temporary directory, listening on `127.0.0.1` on a free port.
///
/// The cluster is created with `initdb` (UTF-8, C locale, SCRAM passwords over TCP) and
/// configured for tests: no fsync, `wal_level = logical` with room for replication slots.
/// Dropping the guard stops the server immediately and deletes the directory.
#[derive(Debug)]
pub struct PgServer {
    bindir: PathBuf,
    dir: TempDir,
    port: u16,
    as_postgres_user: bool,
    running: bool,
}

impl PgServer {
    /// Creates and starts a cluster.
    ///
    /// The server binaries are found through `TIDEGATE_PG_BINDIR`, then `pg_config --bindir`,
    /// then the newest `/usr/lib/postgresql/*/bin`.
    pub fn start() -> io::Result<Self> {
        let bindir = find_bindir()?;
        let dir = tempfile::Builder::new().prefix("tidegate-pg-").tempdir()?;
        let as_postgres_user = running_as_root();
        let mut server = Self {
            bindir,
            dir,
            port: 0,
            as_postgres_user,
            running: false,
        };
        server.init()?;
        // The port can be taken between choosing and binding it; try a few.
        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.start_server() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("PostgreSQL did not start")))
    }

    /// The path of one of the installed PostgreSQL programs (`psql`, `pg_recvlogical`, …),
    /// from the same installation as the server.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name.
    pub fn user(&self) -> &'static str {
        USER
    }

    /// The superuser's password.
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// A `postgres://` URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Creates a database owned by the superuser.
    pub fn create_database(&self, name: &str) -> io::Result<()> {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        self.execute("postgres", &format!("CREATE DATABASE {quoted}"))
            .map(drop)
    }

    /// Runs `sql` (one or more statements) in `database` with `psql`, stopping at the first
    /// error, and returns what it printed: rows unaligned, `|` between columns.
    pub fn execute(&self, database: &str, sql: &str) -> io::Result<String> {
        let output = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", database])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("stdin is piped");
                stdin.write_all(sql.as_bytes())?;
                drop(stdin);
                child.wait_with_output()
            })?;
        check(output, "psql").map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server immediately (as a crash would), keeping its files.
    pub fn stop(&mut self) -> io::Result<()> {
        if self.running {
            self.running = false;
            let data = self.data_dir();
            check(
                self.command("pg_ctl")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "-w", "stop"])
                    .output()?,
                "pg_ctl stop",
            )?;
        }
        Ok(())
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        self.start_server()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server binaries, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn init(&self) -> io::Result<()> {
        let root = self.dir.path();
        let pwfile = root.join("pwfile");
        fs::write(&pwfile, PASSWORD)?;
        if self.as_postgres_user {
            check(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(root)
                    .output()?,
                "chown",
            )?;
        }
        check(
            self.command("initdb")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .output()?,
            "initdb",
        )?;
        fs::remove_file(&pwfile)?;
        let socket_dir = root.display();
        let settings = format!(
            "\n# tidegate-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_level = logical\n\
             max_wal_senders = 20\n\
             max_replication_slots = 20\n\
             max_connections = 100\n\
             shared_buffers = '128MB'\n\
             log_min_messages = warning\n"
        );
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text.push_str(&settings);
        fs::write(&conf, text)
    }

    fn start_server(&mut self) -> io::Result<()> {
        let log = self.dir.path().join("server.log");
        check(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(["-o", &format!("-p {}", self.port)])
                .args(["-w", "-t", "60", "start"])
                .output()?,
            "pg_ctl start",
        )
        .map_err(|error| {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            io::Error::other(format!("{error}\nserver log:\n{tail}"))
        })?;
        self.running = true;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn check(output: Output, what: &str) -> io::Result<Output> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

fn find_bindir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TIDEGATE_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| Path::new(bin).join("initdb").exists())
        .collect();
    candidates.sort_by_key(|path| {
        path.parent()
            .and_then(|version| version.file_name())
            .and_then(|name| name.to_str())
            .and_then(|name| name.parse::<u32>().ok())
    });
    candidates.pop().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "PostgreSQL server binaries not found: install postgresql or set TIDEGATE_PG_BINDIR",
        )
    })
}
