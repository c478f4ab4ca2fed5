//! The replication connection: replication commands and the `CopyBoth` stream.
//!
//! ```text
//! ReplicationClient::connect ──identify_system / create_slot / drop_slot──▶ ReplicationClient
//!        │                                       │
//!        │ create_slot_exporting_snapshot         │ start_replication
//!        ▼                                       ▼
//!  (CreatedSlot, ExportedSnapshot) ──release──▶ ReplicationClient ──▶ ReplicationStream
//! ```
//!
//! Each step consumes what the previous one returned, so the connection cannot be used while
//! an exported snapshot depends on it staying idle, nor for commands once it streams.

use std::time::Duration;

use bytes::{Buf, Bytes};
use postgres_protocol::message::backend::Message;
use tokio::time::Instant;

use crate::config::ConnectConfig;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pgoutput::PgTimestamp;
use crate::wire::{Backend, Connection, copy_data};

/// What `IDENTIFY_SYSTEM` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database connected to.
    pub database: Option<String>,
}

/// A replication slot just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub name: String,
    /// The position from which the slot decodes: every transaction committed after it is
    /// streamed, none before it.
    pub consistent_point: Lsn,
    /// The output plugin (`pgoutput`).
    pub output_plugin: String,
}

/// The snapshot a new slot exported: exactly the data committed before the slot's
/// consistent point.
///
/// Readers join it with `SET TRANSACTION SNAPSHOT '<name>'` inside a `REPEATABLE READ`
/// transaction. It stays valid only while the replication connection that created it stays
/// open and runs no other command, so this handle owns that connection: keep it until every
/// reader of the initial load has joined the snapshot, then [`release`](Self::release) it to
/// get the connection back (and start streaming from
/// [`consistent_point`](Self::consistent_point)). Dropping it closes the connection.
#[derive(Debug)]
pub struct ExportedSnapshot {
    client: ReplicationClient,
    name: String,
    consistent_point: Lsn,
}

impl ExportedSnapshot {
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slot's consistent point: the snapshot holds what committed before it.
    pub fn consistent_point(&self) -> Lsn {
        self.consistent_point
    }

    /// Gives the connection back; the snapshot can no longer be joined.
    pub fn release(self) -> ReplicationClient {
        self.client
    }
}

/// A connection in replication mode (`replication=database`), idle between commands.
#[derive(Debug)]
pub struct ReplicationClient {
    connection: Connection,
}

impl ReplicationClient {
    /// Connects in replication mode and authenticates (SCRAM-SHA-256, md5 or password, over
    /// TLS as `config.ssl_mode` says).
    pub async fn connect(config: &ConnectConfig) -> Result<Self> {
        let connection = Connection::connect(config, &[("replication", "database")]).await?;
        tracing::debug!(
            server = connection.server(),
            version = connection.server_version(),
            "replication connection open"
        );
        Ok(Self { connection })
    }

    /// The server's `server_version_num`, e.g. 150004.
    pub fn server_version(&self) -> u32 {
        self.connection.server_version()
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.connection.simple_query("IDENTIFY_SYSTEM").await?;
        let row = self.single_row(&rows, 4)?;
        Ok(SystemIdentity {
            system_id: row[0].clone().unwrap_or_default(),
            timeline: row[1]
                .as_deref()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| {
                    self.connection
                        .protocol("IDENTIFY_SYSTEM without a timeline")
                })?,
            xlog_pos: self.lsn(row[2].as_deref())?,
            database: row[3].clone(),
        })
    }

    /// Creates a logical slot for `pgoutput` without exporting a snapshot. A `temporary`
    /// slot is dropped when this connection closes.
    pub async fn create_slot(&mut self, name: &str, temporary: bool) -> Result<CreatedSlot> {
        check_slot_name(name)?;
        let temporary = if temporary { " TEMPORARY" } else { "" };
        let sql = if self.server_version() >= 150_000 {
            format!(
                "CREATE_REPLICATION_SLOT {name}{temporary} LOGICAL pgoutput (SNAPSHOT 'nothing')"
            )
        } else {
            format!("CREATE_REPLICATION_SLOT {name}{temporary} LOGICAL pgoutput NOEXPORT_SNAPSHOT")
        };
        let rows = self.connection.simple_query(&sql).await?;
        let (slot, _) = self.created_slot(&rows)?;
        tracing::info!(slot = name, consistent_point = %slot.consistent_point, "replication slot created");
        Ok(slot)
    }

    /// Creates a logical slot for `pgoutput` and exports its snapshot (see
    /// [`ExportedSnapshot`]): an initial load read in that snapshot and the changes streamed
    /// from the slot meet without a gap or an overlap. A `temporary` slot is dropped when the
    /// connection closes (it serves for its snapshot and consistent point alone).
    pub async fn create_slot_exporting_snapshot(
        mut self,
        name: &str,
        temporary: bool,
    ) -> Result<(CreatedSlot, ExportedSnapshot)> {
        check_slot_name(name)?;
        let temporary = if temporary { " TEMPORARY" } else { "" };
        let sql = if self.server_version() >= 150_000 {
            format!(
                "CREATE_REPLICATION_SLOT {name}{temporary} LOGICAL pgoutput (SNAPSHOT 'export')"
            )
        } else {
            format!("CREATE_REPLICATION_SLOT {name}{temporary} LOGICAL pgoutput EXPORT_SNAPSHOT")
        };
        let rows = self.connection.simple_query(&sql).await?;
        let (slot, snapshot) = self.created_slot(&rows)?;
        let snapshot = snapshot
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
            .ok_or_else(|| {
                self.connection
                    .protocol("no exported snapshot of the expected form")
            })?;
        tracing::info!(slot = name, consistent_point = %slot.consistent_point, snapshot, "replication slot created with an exported snapshot");
        let consistent_point = slot.consistent_point;
        Ok((
            slot,
            ExportedSnapshot {
                client: self,
                name: snapshot,
                consistent_point,
            },
        ))
    }

    /// `DROP_REPLICATION_SLOT`; with `wait`, waits until the slot is no longer active instead
    /// of failing.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        check_slot_name(name)?;
        let sql = format!(
            "DROP_REPLICATION_SLOT {name}{}",
            if wait { " WAIT" } else { "" }
        );
        match self.connection.simple_query(&sql).await {
            Err(Error::Server { code, server, .. }) if code == "42704" => {
                Err(Error::SlotNotFound {
                    server,
                    slot: name.to_owned(),
                })
            }
            Err(error) => Err(error),
            Ok(_) => {
                tracing::info!(slot = name, "replication slot dropped");
                Ok(())
            }
        }
    }

    /// `START_REPLICATION SLOT … LOGICAL …` with `pgoutput`'s options; the connection
    /// becomes a [`ReplicationStream`].
    ///
    /// Protocol version 2 with `streaming 'on'` and `binary 'true'` on PostgreSQL 14 and
    /// later (as [`StreamOptions`] allows), version 1 before.
    pub async fn start_replication(mut self, options: &StreamOptions) -> Result<ReplicationStream> {
        check_slot_name(&options.slot)?;
        if options.publications.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "at least one publication must be named",
            });
        }
        let mut names = String::new();
        for (index, publication) in options.publications.iter().enumerate() {
            check_publication_name(publication)?;
            if index > 0 {
                names.push(',');
            }
            // An identifier list inside a string literal: quote for both.
            names.push('"');
            names.push_str(&publication.replace('"', "\"\"").replace('\'', "''"));
            names.push('"');
        }
        let modern = self.server_version() >= 140_000;
        let streaming = modern && options.streaming;
        let binary = modern && options.binary;
        let mut sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '{}', publication_names '{names}'",
            options.slot,
            options.start_lsn,
            if modern { 2 } else { 1 },
        );
        if streaming {
            sql.push_str(", streaming 'on'");
        }
        if binary {
            sql.push_str(", binary 'true'");
        }
        if options.messages && modern {
            sql.push_str(", messages 'true'");
        }
        sql.push(')');
        self.connection.queue_query(&sql)?;
        self.connection.flush().await?;
        loop {
            match self.connection.read_message().await? {
                Backend::CopyBoth => break,
                Backend::Message(Message::ErrorResponse(body)) => {
                    let error = self.connection.server_error(body.fields());
                    // Let the server finish its answer, so the error is what the caller sees.
                    return Err(match error {
                        Error::Server { code, server, .. } if code == "42704" => {
                            Error::SlotNotFound {
                                server,
                                slot: options.slot.clone(),
                            }
                        }
                        other => other,
                    });
                }
                Backend::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                Backend::Message(_) => {
                    return Err(self
                        .connection
                        .protocol("an unexpected answer to START_REPLICATION"));
                }
            }
        }
        tracing::info!(
            slot = options.slot,
            start = %options.start_lsn,
            streaming,
            binary,
            "replication started"
        );
        Ok(ReplicationStream {
            connection: self.connection,
            positions: Positions {
                write: options.start_lsn,
                flush: options.start_lsn,
                apply: options.start_lsn,
            },
            binary,
            streaming,
            status_interval: options.status_interval,
            next_status: Instant::now(),
            server_wal_end: Lsn::ZERO,
        })
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.connection.close().await;
    }

    fn created_slot(&self, rows: &crate::wire::Rows) -> Result<(CreatedSlot, Option<String>)> {
        let row = self.single_row(rows, 4)?;
        Ok((
            CreatedSlot {
                name: row[0].clone().unwrap_or_default(),
                consistent_point: self.lsn(row[1].as_deref())?,
                output_plugin: row[3].clone().unwrap_or_default(),
            },
            row[2].clone(),
        ))
    }

    fn single_row<'r>(
        &self,
        rows: &'r crate::wire::Rows,
        columns: usize,
    ) -> Result<&'r [Option<String>]> {
        match rows.as_slice() {
            [row] if row.len() >= columns => Ok(row),
            _ => Err(self.connection.protocol("an answer of an unexpected shape")),
        }
    }

    fn lsn(&self, text: Option<&str>) -> Result<Lsn> {
        text.and_then(|text| text.parse().ok())
            .ok_or_else(|| self.connection.protocol("a position that is not an LSN"))
    }
}

/// How [`ReplicationClient::start_replication`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamOptions {
    /// The slot to stream from.
    pub slot: String,
    /// The publications whose tables are streamed.
    pub publications: Vec<String>,
    /// Where to start: the last position acknowledged (the server starts at the slot's
    /// confirmed position if that is later). [`Lsn::ZERO`] means the slot's position.
    pub start_lsn: Lsn,
    /// Stream large transactions before they commit (`streaming 'on'`, PostgreSQL 14+), so
    /// the server spills less to disk and a transaction flows through in bounded batches.
    /// Default `true`.
    pub streaming: bool,
    /// Values in binary form (`binary 'true'`, PostgreSQL 14+): decoded exactly as binary
    /// `COPY` is, without parsing text. Default `true`.
    pub binary: bool,
    /// Also stream messages of `pg_logical_emit_message`. Default `false`.
    pub messages: bool,
    /// How often a standby status update is sent even when nothing changed, well below the
    /// server's `wal_sender_timeout`. Default 10 s.
    pub status_interval: Duration,
}

impl StreamOptions {
    /// Options to stream `slot` for `publications` from `start_lsn`, with the defaults.
    pub fn new(slot: impl Into<String>, publications: Vec<String>, start_lsn: Lsn) -> Self {
        Self {
            slot: slot.into(),
            publications,
            start_lsn,
            streaming: true,
            binary: true,
            messages: false,
            status_interval: Duration::from_secs(10),
        }
    }
}

/// The write, flush and apply positions reported in standby status updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Positions {
    /// Received and written.
    pub write: Lsn,
    /// Durable: the server may recycle WAL before it.
    pub flush: Lsn,
    /// Applied (visible) at the target.
    pub apply: Lsn,
}

/// A message of the replication stream.
#[derive(Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `XLogData`: one `pgoutput` message.
    XLogData {
        /// The WAL position of the change (for a commit, of the commit record).
        wal_start: Lsn,
        /// The server's current WAL end.
        wal_end: Lsn,
        /// When the server sent it.
        server_time: PgTimestamp,
        /// The `pgoutput` message.
        data: Bytes,
    },
    /// Primary keepalive.
    Keepalive {
        /// The position up to which the server has sent everything.
        wal_end: Lsn,
        /// When the server sent it.
        server_time: PgTimestamp,
        /// The server asked for a status update (it was sent already).
        reply_requested: bool,
    },
}

// The data holds row values: show only its size.
impl std::fmt::Debug for ReplicationMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => f
                .debug_struct("XLogData")
                .field("wal_start", wal_start)
                .field("wal_end", wal_end)
                .field("bytes", &data.len())
                .finish_non_exhaustive(),
            Self::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => f
                .debug_struct("Keepalive")
                .field("wal_end", wal_end)
                .field("reply_requested", reply_requested)
                .finish_non_exhaustive(),
        }
    }
}

/// A started replication: the `CopyBoth` stream of `XLogData` and keepalives, and the
/// standby status updates going back.
///
/// The positions reported are the caller's: [`acknowledge`](Self::acknowledge) or
/// [`set_positions`](Self::set_positions) say what the target has made durable, and the
/// stream never reports more. Status updates go out when the server asks for one, every
/// [`StreamOptions::status_interval`], and when the caller calls
/// [`send_status`](Self::send_status).
#[derive(Debug)]
pub struct ReplicationStream {
    connection: Connection,
    positions: Positions,
    binary: bool,
    streaming: bool,
    status_interval: Duration,
    next_status: Instant,
    server_wal_end: Lsn,
}

impl ReplicationStream {
    /// Whether values arrive in binary form (`binary 'true'` was accepted for this server).
    pub fn binary(&self) -> bool {
        self.binary
    }

    /// Whether large transactions may be streamed before they commit.
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// The positions that are reported.
    pub fn positions(&self) -> Positions {
        self.positions
    }

    /// The highest WAL end the server reported so far.
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// Whether more of what the server sent was already received: the next
    /// [`recv`](Self::recv) has (part of) a message to return without waiting.
    pub fn has_received_more(&self) -> bool {
        self.connection.has_buffered()
    }

    /// Sets the reported positions; each only ever moves forward. Sent with the next status
    /// update.
    pub fn set_positions(&mut self, positions: Positions) {
        self.positions.write = self.positions.write.max(positions.write);
        self.positions.flush = self.positions.flush.max(positions.flush);
        self.positions.apply = self.positions.apply.max(positions.apply);
    }

    /// Everything up to `lsn` (a commit's end LSN) is durable at the target: sets all three
    /// positions to at least `lsn`. Sent with the next status update.
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.set_positions(Positions {
            write: lsn,
            flush: lsn,
            apply: lsn,
        });
    }

    /// Sends a standby status update with the current positions now. Cancel-safe: an
    /// interrupted update is completed by the next call.
    pub async fn send_status(&mut self) -> Result<()> {
        self.queue_status(false)?;
        self.connection.flush().await
    }

    /// The next message; `None` once the server ended the stream. Keepalives that ask for a
    /// reply are answered before they are returned, and status updates go out on schedule
    /// while waiting.
    ///
    /// Cancel-safe: dropping the future loses no message.
    pub async fn recv(&mut self) -> Result<Option<ReplicationMessage>> {
        loop {
            if Instant::now() >= self.next_status {
                self.queue_status(false)?;
            }
            // Pending status bytes go out first (they may be left over from a cancelled call).
            self.connection.flush().await?;
            let message =
                match tokio::time::timeout_at(self.next_status, self.connection.read_message())
                    .await
                {
                    Ok(message) => message?,
                    // Time for a status update; the read resumes where it was.
                    Err(_) => continue,
                };
            match message {
                Backend::Message(Message::CopyData(body)) => {
                    if let Some(message) = self.copy_data(copy_data(body))? {
                        if let ReplicationMessage::Keepalive {
                            reply_requested: true,
                            ..
                        } = message
                        {
                            self.queue_status(false)?;
                            self.connection.flush().await?;
                        }
                        return Ok(Some(message));
                    }
                }
                Backend::Message(Message::CopyDone) => return Ok(None),
                Backend::Message(Message::ErrorResponse(body)) => {
                    return Err(self.connection.server_error(body.fields()));
                }
                Backend::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                _ => {
                    return Err(self
                        .connection
                        .protocol("an unexpected message in the replication stream"));
                }
            }
        }
    }

    /// Ends the stream (CopyDone) after a last status update, and closes the connection.
    pub async fn close(mut self) -> Result<()> {
        self.queue_status(false)?;
        self.connection.queue_copy_done();
        let flushed = self.connection.flush().await;
        self.connection.close().await;
        flushed
    }

    /// Parses the payload of one CopyData.
    fn copy_data(&mut self, mut data: Bytes) -> Result<Option<ReplicationMessage>> {
        let Some(&kind) = data.first() else {
            return Err(self.connection.protocol("an empty CopyData message"));
        };
        match kind {
            b'w' => {
                if data.len() < 25 {
                    return Err(self.connection.protocol("a short XLogData header"));
                }
                data.advance(1);
                let wal_start = Lsn::new(data.get_u64());
                let wal_end = Lsn::new(data.get_u64());
                let server_time = PgTimestamp(data.get_i64());
                self.server_wal_end = self.server_wal_end.max(wal_end);
                Ok(Some(ReplicationMessage::XLogData {
                    wal_start,
                    wal_end,
                    server_time,
                    data,
                }))
            }
            b'k' => {
                if data.len() != 18 {
                    return Err(self.connection.protocol("a keepalive of the wrong length"));
                }
                data.advance(1);
                let wal_end = Lsn::new(data.get_u64());
                let server_time = PgTimestamp(data.get_i64());
                let reply_requested = data.get_u8() != 0;
                self.server_wal_end = self.server_wal_end.max(wal_end);
                Ok(Some(ReplicationMessage::Keepalive {
                    wal_end,
                    server_time,
                    reply_requested,
                }))
            }
            _ => Err(self.connection.protocol("an unknown CopyData message kind")),
        }
    }

    /// Appends a standby status update to the write buffer.
    fn queue_status(&mut self, reply_requested: bool) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut update = [0u8; 34];
        update[0] = b'r';
        update[1..9].copy_from_slice(&self.positions.write.as_u64().to_be_bytes());
        update[9..17].copy_from_slice(&self.positions.flush.as_u64().to_be_bytes());
        update[17..25].copy_from_slice(&self.positions.apply.as_u64().to_be_bytes());
        update[25..33].copy_from_slice(&PgTimestamp::from_unix_micros(now).0.to_be_bytes());
        update[33] = u8::from(reply_requested);
        self.connection.queue_copy_data(&update)?;
        self.next_status = Instant::now() + self.status_interval;
        tracing::trace!(flush = %self.positions.flush, "standby status update");
        Ok(())
    }
}

/// Slot names: what PostgreSQL accepts (`[a-z0-9_]`, at most 63 bytes), so they go into
/// commands unquoted.
fn check_slot_name(name: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidName {
        what: "slot",
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 63 {
        return Err(invalid("must be 1 to 63 bytes long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid("may hold only lower-case letters, digits and _"));
    }
    Ok(())
}

/// Publication names are identifiers: any text but NUL, at most 63 bytes.
pub(crate) fn check_publication_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(Error::InvalidName {
            what: "publication",
            name: name.to_owned(),
            reason: "must be 1 to 63 bytes long, without NUL",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(check_slot_name("tidegate_orders_1").is_ok());
        for bad in ["", "Upper", "with space", "semi;colon", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
    }
}
