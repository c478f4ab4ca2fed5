//! [`ChangeStream`]: the replication stream decoded into change events, acknowledged by the
//! caller.

use std::collections::VecDeque;

use bytes::Bytes;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Row};
use tidegate_replicate::postgres::TypeCatalog;

use crate::changes::{BatchConfig, ChangeDecoder, ChangeEvent, Progress};
use crate::config::ConnectConfig;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::replication::{
    Positions, ReplicationClient, ReplicationMessage, ReplicationStream, StreamOptions,
};

/// Change events from a replication slot, with the caller in charge of acknowledgements.
///
/// The caller pulls events with [`next`](Self::next) and, once a transaction's changes are
/// durable at its target, acknowledges the [`ChangeEvent::Commit`]'s `end_lsn` with
/// [`acknowledge`](Self::acknowledge). The stream never reports a position the caller did not
/// give it — with one exception the caller opts into: after
/// [`acknowledge_idle`](Self::acknowledge_idle) (everything delivered so far is durable), a
/// keepalive that finds no transaction open moves the flush position up to the server's
/// position, so a quiet publication does not hold WAL back while other tables change.
///
/// Restarting from the last acknowledged position (a new stream with
/// [`StreamOptions::start_lsn`] set to it) delivers every transaction that committed after it
/// exactly once.
#[derive(Debug)]
pub struct ChangeStream {
    replication: ReplicationStream,
    decoder: ChangeDecoder,
    connect: ConnectConfig,
    /// The ordinary connection the type catalog is read through, opened when first needed.
    catalog: Option<PgConnection>,
    /// Events decoded and not yet returned.
    queue: VecDeque<ChangeEvent>,
    /// A message whose decoding waits for catalog entries.
    pending: Option<(Lsn, Bytes)>,
    /// The end LSN of the last commit returned.
    last_commit_end: Option<Lsn>,
    /// Set by `acknowledge_idle`, cleared by any transaction event returned after it.
    idle_acknowledged: bool,
}

impl ChangeStream {
    /// Connects and starts streaming `options.slot`.
    ///
    /// Values are asked for in binary form when [`StreamOptions::binary`] is set, the server
    /// supports it (PostgreSQL 14+), and every column of the published tables has an exact
    /// binary decoding; otherwise in text form, and every column is captured as `Utf8`
    /// (`batch.binary` is overridden accordingly).
    pub async fn start(
        connect: &ConnectConfig,
        options: StreamOptions,
        batch: BatchConfig,
    ) -> Result<Self> {
        let client = ReplicationClient::connect(connect).await?;
        Self::start_on(client, connect, options, batch).await
    }

    /// Starts streaming on a connection already open, for instance the one an
    /// [`ExportedSnapshot`](crate::ExportedSnapshot) gave back once the initial load joined
    /// its snapshot.
    pub async fn start_on(
        client: ReplicationClient,
        connect: &ConnectConfig,
        mut options: StreamOptions,
        mut batch: BatchConfig,
    ) -> Result<Self> {
        let mut catalog_connection = connect_catalog(connect).await?;
        let mut catalog = TypeCatalog::new();
        options.binary = options.binary
            && client.server_version() >= 140_000
            && published_types_decode(&mut catalog_connection, &mut catalog, &options.publications)
                .await?;
        batch.binary = options.binary;
        let mut decoder = ChangeDecoder::new(batch)?;
        *decoder.catalog_mut() = catalog;
        let replication = client.start_replication(&options).await?;
        Ok(Self {
            replication,
            decoder,
            connect: connect.clone(),
            catalog: Some(catalog_connection),
            queue: VecDeque::new(),
            pending: None,
            last_commit_end: None,
            idle_acknowledged: false,
        })
    }

    /// Whether values arrive in binary form.
    pub fn binary(&self) -> bool {
        self.replication.binary()
    }

    /// The positions reported to the server.
    pub fn positions(&self) -> Positions {
        self.replication.positions()
    }

    /// The highest WAL position the server reported.
    pub fn server_wal_end(&self) -> Lsn {
        self.replication.server_wal_end()
    }

    /// Whether more was already received from the server than returned: the next
    /// [`next`](Self::next) starts on it without waiting. A keepalive followed by more data is
    /// not the end of what the server had to send.
    pub fn has_received_more(&self) -> bool {
        !self.queue.is_empty() || self.pending.is_some() || self.replication.has_received_more()
    }

    /// Everything up to `lsn` (a [`ChangeEvent::Commit`]'s `end_lsn`) is durable at the
    /// target. Reported with the next status update; call [`send_status`](Self::send_status)
    /// to report it now.
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.replication.acknowledge(lsn);
    }

    /// Everything returned so far is durable at the target: acknowledges the last commit
    /// returned and, until the next transaction event, lets keepalives move the flush
    /// position up to the server's position while no transaction is open.
    pub fn acknowledge_idle(&mut self) {
        if let Some(end) = self.last_commit_end {
            self.replication.acknowledge(end);
        }
        self.idle_acknowledged = true;
    }

    /// Sends a standby status update with the current positions now.
    pub async fn send_status(&mut self) -> Result<()> {
        self.replication.send_status().await
    }

    /// The next event; `None` when the server ended the stream.
    ///
    /// Cancel-safe: a dropped future loses no event (an interrupted type look-up is done again
    /// on a new connection).
    pub async fn next(&mut self) -> Result<Option<ChangeEvent>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                self.returning(&event);
                return Ok(Some(event));
            }
            if let Some((wal_start, data)) = self.pending.take() {
                // Put back until decoded, so a cancelled type look-up loses nothing.
                self.pending = Some((wal_start, data.clone()));
                match self.decoder.decode(wal_start, &data, &mut self.queue)? {
                    Progress::Done => self.pending = None,
                    Progress::NeedTypes(oids) => self.load_types(oids).await?,
                }
                continue;
            }
            let Some(message) = self.replication.recv().await? else {
                return Ok(None);
            };
            match message {
                ReplicationMessage::XLogData {
                    wal_start, data, ..
                } => self.pending = Some((wal_start, data)),
                ReplicationMessage::Keepalive { wal_end, .. } => {
                    if self.idle_acknowledged && !self.decoder.has_open_transactions() {
                        // Everything returned is durable and nothing is open: what the server
                        // sent up to here was either returned or not published.
                        let before = self.replication.positions().flush;
                        self.replication.acknowledge(wal_end);
                        if self.replication.positions().flush > before {
                            tracing::debug!(flush = %wal_end, "idle: flush position advanced");
                            self.replication.send_status().await?;
                        }
                    }
                    return Ok(Some(ChangeEvent::Keepalive { wal_end }));
                }
            }
        }
    }

    /// Ends the stream after a last status update and closes the connections.
    pub async fn close(self) -> Result<()> {
        if let Some(catalog) = self.catalog {
            let _ = sqlx::Connection::close(catalog).await;
        }
        self.replication.close().await
    }

    /// Bookkeeping for an event about to be returned.
    fn returning(&mut self, event: &ChangeEvent) {
        match event {
            ChangeEvent::Commit { end_lsn, .. } => {
                self.last_commit_end = Some(*end_lsn);
                self.idle_acknowledged = false;
            }
            ChangeEvent::Keepalive { .. } | ChangeEvent::Message { .. } => {}
            _ => self.idle_acknowledged = false,
        }
    }

    async fn load_types(&mut self, oids: Vec<u32>) -> Result<()> {
        // Taken out while in use: if this future is dropped mid-query, the connection goes
        // with it and the next look-up opens a new one.
        let mut connection = match self.catalog.take() {
            Some(connection) => connection,
            None => connect_catalog(&self.connect).await?,
        };
        let loaded = self
            .decoder
            .catalog_mut()
            .load(&mut connection, oids.iter().copied())
            .await;
        loaded.map_err(|source| Error::Sql {
            what: "reading column types",
            source,
        })?;
        // Types that do not exist (dropped meanwhile) would be asked for forever.
        if let Some(oid) = oids
            .iter()
            .find(|oid| !self.decoder.catalog_mut().is_resolvable(**oid))
        {
            tracing::warn!(type_oid = oid, "column type not found in the catalog");
            return Err(Error::Sql {
                what: "reading column types",
                source: sqlx::Error::RowNotFound,
            });
        }
        self.catalog = Some(connection);
        Ok(())
    }
}

async fn connect_catalog(connect: &ConnectConfig) -> Result<PgConnection> {
    connect
        .sqlx_options()
        .connect()
        .await
        .map_err(|source| Error::Sql {
            what: "connecting for publication and type look-ups",
            source,
        })
}

/// Whether every column of every table of `publications` decodes natively from binary form;
/// loads their types into `catalog`.
async fn published_types_decode(
    connection: &mut PgConnection,
    catalog: &mut TypeCatalog,
    publications: &[String],
) -> Result<bool> {
    let error = |source| Error::Sql {
        what: "reading the published columns' types",
        source,
    };
    let rows = sqlx::query(
        "SELECT DISTINCT a.atttypid::int8, a.atttypmod \
         FROM pg_publication_tables p \
         JOIN pg_namespace n ON n.nspname = p.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE p.pubname = ANY($1)",
    )
    .bind(publications)
    .fetch_all(&mut *connection)
    .await
    .map_err(error)?;
    let mut types = Vec::with_capacity(rows.len());
    for row in rows {
        let oid = u32::try_from(row.try_get::<i64, _>(0).map_err(error)?).unwrap_or(0);
        let typmod: i32 = row.try_get(1).map_err(error)?;
        types.push((oid, typmod));
    }
    catalog
        .load(connection, types.iter().map(|(oid, _)| *oid))
        .await
        .map_err(error)?;
    let native = types
        .iter()
        .all(|(oid, typmod)| catalog.native_type(*oid, *typmod).is_some());
    if !native {
        tracing::info!("a published column has no exact binary decoding: values come as text");
    }
    Ok(native)
}
