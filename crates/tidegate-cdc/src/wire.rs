//! One PostgreSQL protocol connection: TCP, optional TLS, startup, authentication, framing
//! and simple queries. Frontend messages and SCRAM come from `postgres-protocol`; framing is
//! ours so that a length is checked against the maximum before anything is reserved for it.
//!
//! Reading and writing are cancel-safe: bytes are read into and written out of buffers the
//! connection keeps, so a future dropped at an `.await` loses nothing and corrupts nothing;
//! the next call carries on where it stopped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{self, ErrorFields, Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{ConnectConfig, SslMode};
use crate::error::{Error, Result};
use crate::tls;

/// Tag of CopyBothResponse, which `postgres-protocol` does not parse.
const COPY_BOTH_RESPONSE: u8 = b'W';

/// TCP, or TLS over TCP.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// A message from the server.
pub(crate) enum Backend {
    /// Any message `postgres-protocol` parses.
    Message(Message),
    /// CopyBothResponse: the replication stream starts.
    CopyBoth,
}

/// Rows of a simple query's result, every value as text. Only used for replication commands
/// and catalog-like answers (positions, slot and snapshot names), never for table rows.
pub(crate) type Rows = Vec<Vec<Option<String>>>;

/// An authenticated connection, idle between queries.
#[derive(Debug)]
pub(crate) struct Connection {
    transport: Transport,
    read: BytesMut,
    write: BytesMut,
    server: String,
    max_message: usize,
    /// `server_version_num` from the startup parameters, e.g. 150004.
    server_version: u32,
}

impl Connection {
    /// Connects, negotiates TLS, starts up with `parameters` (besides user, database,
    /// application name and client encoding) and authenticates.
    pub(crate) async fn connect(
        config: &ConnectConfig,
        parameters: &[(&str, &str)],
    ) -> Result<Self> {
        let server = config.server_label();
        let timeout = config.connect_timeout;
        match tokio::time::timeout(timeout, Self::connect_inner(config, parameters)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Connect {
                server,
                source: io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"),
            }),
        }
    }

    async fn connect_inner(config: &ConnectConfig, parameters: &[(&str, &str)]) -> Result<Self> {
        let server = config.server_label();
        let connect_error = |source| Error::Connect {
            server: server.clone(),
            source,
        };
        let mut tcp = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(connect_error)?;
        tcp.set_nodelay(true).map_err(connect_error)?;
        let transport = if config.ssl_mode == SslMode::Disable {
            Transport::Plain(tcp)
        } else {
            let mut request = BytesMut::new();
            frontend::ssl_request(&mut request);
            tcp.write_all(&request).await.map_err(connect_error)?;
            let answer = tcp.read_u8().await.map_err(connect_error)?;
            match (answer, config.ssl_mode) {
                (b'S', _) => {
                    let tls_error = |reason: String| Error::Tls {
                        server: server.clone(),
                        reason,
                    };
                    let client = tls::client_config(config).map_err(tls_error)?;
                    let name = tls::server_name(config).map_err(tls_error)?;
                    let stream = TlsConnector::from(std::sync::Arc::new(client))
                        .connect(name, tcp)
                        .await
                        .map_err(|error| tls_error(error.to_string()))?;
                    Transport::Tls(Box::new(stream))
                }
                (b'N', SslMode::Prefer) => Transport::Plain(tcp),
                (b'N', _) => {
                    return Err(Error::Tls {
                        server,
                        reason: "the server does not offer TLS, and sslmode requires it".to_owned(),
                    });
                }
                _ => {
                    return Err(Error::Protocol {
                        server,
                        reason: "an unexpected answer to the TLS request",
                    });
                }
            }
        };
        let mut connection = Self {
            transport,
            read: BytesMut::with_capacity(64 << 10),
            write: BytesMut::with_capacity(4 << 10),
            server,
            max_message: config.max_message_bytes,
            server_version: 0,
        };
        let mut startup = vec![
            ("user", config.user.as_str()),
            ("database", config.database.as_str()),
            ("application_name", config.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        startup.extend_from_slice(parameters);
        frontend::startup_message(startup.iter().copied(), &mut connection.write)
            .map_err(|_| connection.protocol("a startup parameter holds a NUL byte"))?;
        connection.flush().await?;
        connection.authenticate(config).await?;
        connection.wait_until_ready().await?;
        Ok(connection)
    }

    /// `host:port/database`.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// `server_version_num`, e.g. 150004 (0 if the server did not say).
    pub(crate) fn server_version(&self) -> u32 {
        self.server_version
    }

    pub(crate) fn protocol(&self, reason: &'static str) -> Error {
        Error::Protocol {
            server: self.server.clone(),
            reason,
        }
    }

    fn io_error(&self, source: io::Error) -> Error {
        Error::Connect {
            server: self.server.clone(),
            source,
        }
    }

    /// A server error: SQLSTATE and primary message only.
    pub(crate) fn server_error(&self, fields: ErrorFields<'_>) -> Error {
        let (code, message) = error_code_and_message(fields);
        Error::Server {
            server: self.server.clone(),
            code,
            message,
        }
    }

    async fn authenticate(&mut self, config: &ConnectConfig) -> Result<()> {
        let auth_error = |server: &str, reason: &str| Error::Authentication {
            server: server.to_owned(),
            reason: reason.to_owned(),
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let message = match self.read_message().await? {
                Backend::Message(message) => message,
                Backend::CopyBoth => return Err(self.protocol("CopyBoth during startup")),
            };
            match message {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(config.password().as_bytes(), &mut self.write)
                        .map_err(|_| auth_error(&self.server, "the password holds a NUL byte"))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(
                        config.user.as_bytes(),
                        config.password().as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write)
                        .map_err(|_| self.protocol("an md5 hash with a NUL byte"))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = false;
                    let mut mechanisms = body.mechanisms();
                    while let Some(mechanism) = fallible_next(&mut mechanisms)
                        .map_err(|_| self.protocol("a malformed SASL mechanism list"))?
                    {
                        offered |= mechanism == SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(auth_error(
                            &self.server,
                            "the server offers no SASL mechanism we support (SCRAM-SHA-256)",
                        ));
                    }
                    // Channel binding is not offered ('n'); the server accepts that unless it
                    // requires SCRAM-SHA-256-PLUS.
                    let client = ScramSha256::new(
                        config.password().as_bytes(),
                        ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        client.message(),
                        &mut self.write,
                    )
                    .map_err(|_| self.protocol("a malformed SCRAM message"))?;
                    scram = Some(client);
                    self.flush().await?;
                }
                Message::AuthenticationSaslContinue(body) => {
                    let Some(client) = scram.as_mut() else {
                        return Err(self.protocol("SASL continue without a SASL exchange"));
                    };
                    client.update(body.data()).map_err(|_| {
                        auth_error(&self.server, "the server's SCRAM message is invalid")
                    })?;
                    frontend::sasl_response(client.message(), &mut self.write)
                        .map_err(|_| self.protocol("a malformed SCRAM message"))?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let Some(client) = scram.as_mut() else {
                        return Err(self.protocol("SASL final without a SASL exchange"));
                    };
                    client.finish(body.data()).map_err(|_| {
                        auth_error(
                            &self.server,
                            "the server failed to prove it knows the password",
                        )
                    })?;
                }
                Message::ErrorResponse(body) => {
                    let (code, message) = error_code_and_message(body.fields());
                    return Err(if code.starts_with("28") {
                        Error::Authentication {
                            server: self.server.clone(),
                            reason: message,
                        }
                    } else {
                        Error::Server {
                            server: self.server.clone(),
                            code,
                            message,
                        }
                    });
                }
                Message::NoticeResponse(_) => {}
                _ => {
                    return Err(auth_error(
                        &self.server,
                        "the server asks for an authentication method we do not support \
                         (supported: SCRAM-SHA-256, md5, password)",
                    ));
                }
            }
        }
    }

    /// Reads the startup's parameters until ReadyForQuery.
    async fn wait_until_ready(&mut self) -> Result<()> {
        loop {
            match self.read_message().await? {
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Message(Message::ParameterStatus(body)) => {
                    if body.name().ok() == Some("server_version") {
                        self.server_version = parse_server_version(body.value().unwrap_or(""));
                    }
                }
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(self.server_error(body.fields()));
                }
                Backend::Message(Message::BackendKeyData(_) | Message::NoticeResponse(_)) => {}
                _ => return Err(self.protocol("an unexpected message during startup")),
            }
        }
    }

    /// Appends a Query message to the write buffer.
    pub(crate) fn queue_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.write).map_err(|_| self.protocol("a query holds a NUL byte"))
    }

    /// Appends a CopyData message.
    pub(crate) fn queue_copy_data(&mut self, data: &[u8]) -> Result<()> {
        let message = frontend::CopyData::new(data)
            .map_err(|_| self.protocol("a CopyData message too large to send"))?;
        message.write(&mut self.write);
        Ok(())
    }

    /// Appends a CopyDone message.
    pub(crate) fn queue_copy_done(&mut self) {
        frontend::copy_done(&mut self.write);
    }

    /// Sends what the write buffer holds.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        while self.write.has_remaining() {
            match self.transport.write_buf(&mut self.write).await {
                Ok(0) => {
                    return Err(self.io_error(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the server closed the connection",
                    )));
                }
                Ok(_) => {}
                Err(error) => return Err(self.io_error(error)),
            }
        }
        self.transport
            .flush()
            .await
            .map_err(|error| self.io_error(error))
    }

    /// Runs one simple-protocol statement and returns its rows as text.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Rows> {
        self.queue_query(sql)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.read_message().await? {
                Backend::Message(Message::DataRow(row)) => {
                    let buffer = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = fallible_next(&mut ranges)
                        .map_err(|_| self.protocol("a malformed DataRow"))?
                    {
                        values.push(match range {
                            None => None,
                            Some(range) => Some(
                                buffer
                                    .get(range)
                                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                                    .ok_or_else(|| self.protocol("a malformed DataRow"))?
                                    .to_owned(),
                            ),
                        });
                    }
                    rows.push(values);
                }
                Backend::Message(Message::ErrorResponse(body)) => {
                    failure = Some(self.server_error(body.fields()));
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match failure {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    };
                }
                Backend::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse
                    | Message::NoticeResponse(_)
                    | Message::ParameterStatus(_),
                ) => {}
                // A COPY we did not ask for: leave it rather than hang.
                Backend::CopyBoth | Backend::Message(_) => {
                    return Err(self.protocol("an unexpected message in a query's answer"));
                }
            }
        }
    }

    /// Whether bytes from the server were received and not yet returned as a message.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.read.is_empty()
    }

    /// Reads the next message. Cancel-safe.
    pub(crate) async fn read_message(&mut self) -> Result<Backend> {
        loop {
            if let Some(message) = self.parse_message()? {
                return Ok(message);
            }
            match self.transport.read_buf(&mut self.read).await {
                Ok(0) => {
                    return Err(self.io_error(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )));
                }
                Ok(_) => {}
                Err(error) => return Err(self.io_error(error)),
            }
        }
    }

    /// Takes one complete message off the read buffer, if it holds one.
    fn parse_message(&mut self) -> Result<Option<Backend>> {
        let header =
            Header::parse(&self.read).map_err(|_| self.protocol("a message length below 4"))?;
        let Some(header) = header else {
            return Ok(None);
        };
        // `len` counts itself but not the tag; Header::parse checked it is at least 4.
        let total = usize::try_from(header.len())
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        if total > self.max_message {
            return Err(Error::MessageTooLarge {
                server: self.server.clone(),
                len: total,
                max: self.max_message,
            });
        }
        if self.read.len() < total {
            // Reserve only now that the length is known to be acceptable.
            self.read.reserve(total - self.read.len());
            return Ok(None);
        }
        let mut frame = self.read.split_to(total);
        if header.tag() == COPY_BOTH_RESPONSE {
            return Ok(Some(Backend::CopyBoth));
        }
        match backend::Message::parse(&mut frame) {
            Ok(Some(message)) => Ok(Some(Backend::Message(message))),
            Ok(None) => Err(self.protocol("an incomplete message")),
            Err(_) => Err(self.protocol("a malformed or unknown message")),
        }
    }

    /// Sends Terminate and closes the connection, ignoring errors: the server may be gone.
    pub(crate) async fn close(mut self) {
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
        let _ = self.transport.shutdown().await;
    }
}

/// A copy of a CopyData message's payload, taken from the frame without copying.
pub(crate) fn copy_data(body: backend::CopyDataBody) -> Bytes {
    body.into_bytes()
}

/// SQLSTATE and primary message of an ErrorResponse; `DETAIL` and `HINT` are dropped, as
/// they can quote row values.
fn error_code_and_message(mut fields: ErrorFields<'_>) -> (String, String) {
    let mut code = String::from("XX000");
    let mut message = String::from("(no message)");
    while let Ok(Some(field)) = fallible_next(&mut fields) {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

/// `major * 10000 + minor` from `server_version` ("15.4 (Debian 15.4-1)", "16beta1").
fn parse_server_version(text: &str) -> u32 {
    let digits = |part: &str| -> u32 {
        part.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    let mut parts = text.split(['.', ' ']);
    let major = parts.next().map(digits).unwrap_or(0);
    let minor = parts.next().map(digits).unwrap_or(0);
    major * 10_000 + minor
}

/// One step of one of `postgres-protocol`'s fallible iterators.
fn fallible_next<I: FallibleIterator<Error = io::Error>>(
    iterator: &mut I,
) -> io::Result<Option<I::Item>> {
    iterator.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"),
            150_004
        );
        assert_eq!(parse_server_version("16beta1"), 160_000);
        assert_eq!(parse_server_version("9.6.24"), 90_006);
        assert_eq!(parse_server_version(""), 0);
    }
}
