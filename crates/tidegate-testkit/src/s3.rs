//! A throwaway S3-compatible server: moto's server mode.
//!
//! moto keeps what S3 records about server-side encryption (a `HEAD` returns the algorithm and
//! the KMS key id that were asked for), which is what the encryption tests check. It accepts
//! any credentials and does not check signatures.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for_port};

/// A moto S3 server on `127.0.0.1`, killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts moto's server (`moto_server`, or `python3 -m moto.server`; install it with
    /// `pip install 'moto[server]'`).
    pub fn start() -> io::Result<Self> {
        let port = free_port()?;
        let program =
            std::env::var("TIDEGATE_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let spawn = |mut command: Command| {
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = match spawn(Command::new(&program)) {
            Ok(child) => child,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let mut command = Command::new("python3");
                command.args(["-m", "moto.server"]);
                spawn(command)?
            }
            Err(error) => return Err(error),
        };
        let mut server = Self { child, port };
        if let Err(error) = wait_for_port(port, Duration::from_secs(60)) {
            let _ = server.child.kill();
            return Err(error);
        }
        Ok(server)
    }

    /// The endpoint URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) -> io::Result<()> {
        let (status, _) = self.request("PUT", &format!("/{bucket}"))?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "creating bucket {bucket}: HTTP {status}"
            )))
        }
    }

    /// What the server recorded about an object's server-side encryption:
    /// `(algorithm, KMS key id)`, e.g. `("aws:kms", Some("alias/key"))`.
    ///
    /// Asked through boto3 (installed with moto), an independent S3 client: requests for
    /// KMS-encrypted objects must be signed.
    pub fn object_encryption(
        &self,
        bucket: &str,
        key: &str,
    ) -> io::Result<(Option<String>, Option<String>)> {
        let script = "import sys, boto3\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                              aws_access_key_id='test', aws_secret_access_key='test')\n\
            head = s3.head_object(Bucket=sys.argv[2], Key=sys.argv[3])\n\
            print(head.get('ServerSideEncryption') or '')\n\
            print(head.get('SSEKMSKeyId') or '')\n";
        let output = Command::new("python3")
            .args(["-c", script, &self.endpoint(), bucket, key])
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "head_object {bucket}/{key}: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text
            .lines()
            .map(|line| Some(line.to_owned()).filter(|l| !l.is_empty()));
        Ok((lines.next().flatten(), lines.next().flatten()))
    }

    /// One unsigned HTTP/1.1 request without a body; returns the status and headers.
    fn request(&self, method: &str, path: &str) -> io::Result<(u16, Vec<(String, String)>)> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        if method != "HEAD" {
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
        Ok((status, headers))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
