//! What runs on an ordinary connection (sqlx): publications, slot look-ups and drops.
//!
//! Names reach SQL as quoted identifiers or bound parameters, never spliced in raw.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};
use tidegate_replicate::TableRef;

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::replication::check_publication_name;

/// Which tables a publication publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationTables {
    /// `FOR ALL TABLES`, including tables created later (needs a superuser).
    All,
    /// `FOR TABLE …`: these tables (a partitioned table with its partitions).
    Tables(Vec<TableRef>),
}

/// Creates publication `name` for `tables`, publishing inserts, updates, deletes and
/// truncates, with `publish_via_partition_root = true`: changes to a partition arrive as
/// changes to its root, the table the initial load read.
pub async fn create_publication(
    connection: &mut PgConnection,
    name: &str,
    tables: &PublicationTables,
) -> Result<()> {
    check_publication_name(name)?;
    let mut sql = String::from("CREATE PUBLICATION ");
    push_identifier(&mut sql, name);
    match tables {
        PublicationTables::All => sql.push_str(" FOR ALL TABLES"),
        PublicationTables::Tables(tables) => {
            if tables.is_empty() {
                return Err(Error::InvalidConfig {
                    reason: "a publication needs at least one table",
                });
            }
            sql.push_str(" FOR TABLE ");
            push_tables(&mut sql, tables);
        }
    }
    sql.push_str(
        " WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)",
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(connection)
        .await
        .map_err(|source| Error::Sql {
            what: "creating the publication",
            source,
        })?;
    tracing::info!(publication = name, "publication created");
    Ok(())
}

/// Replaces the tables of publication `name` (`ALTER PUBLICATION … SET TABLE`).
pub async fn set_publication_tables(
    connection: &mut PgConnection,
    name: &str,
    tables: &[TableRef],
) -> Result<()> {
    check_publication_name(name)?;
    if tables.is_empty() {
        return Err(Error::InvalidConfig {
            reason: "a publication needs at least one table",
        });
    }
    let mut sql = String::from("ALTER PUBLICATION ");
    push_identifier(&mut sql, name);
    sql.push_str(" SET TABLE ");
    push_tables(&mut sql, tables);
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(connection)
        .await
        .map_err(|source| Error::Sql {
            what: "changing the publication's tables",
            source,
        })?;
    Ok(())
}

/// Drops publication `name` if it exists.
pub async fn drop_publication(connection: &mut PgConnection, name: &str) -> Result<()> {
    check_publication_name(name)?;
    let mut sql = String::from("DROP PUBLICATION IF EXISTS ");
    push_identifier(&mut sql, name);
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(connection)
        .await
        .map_err(|source| Error::Sql {
            what: "dropping the publication",
            source,
        })?;
    Ok(())
}

/// The tables publication `name` publishes (partitions appear as their root), or `None` if
/// it does not exist.
pub async fn publication_tables(
    connection: &mut PgConnection,
    name: &str,
) -> Result<Option<Vec<TableRef>>> {
    let error = |source| Error::Sql {
        what: "looking up the publication",
        source,
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(name)
            .fetch_one(&mut *connection)
            .await
            .map_err(error)?;
    if !exists {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
         WHERE pubname = $1 ORDER BY 1, 2",
    )
    .bind(name)
    .fetch_all(&mut *connection)
    .await
    .map_err(error)?;
    rows.into_iter()
        .map(|row| {
            Ok(TableRef::new(
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
            ))
        })
        .collect::<sqlx::Result<Vec<_>>>()
        .map(Some)
        .map_err(error)
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotInfo {
    /// The slot's name.
    pub name: String,
    /// Its output plugin (`pgoutput`), `None` for a physical slot.
    pub plugin: Option<String>,
    /// The database it decodes, `None` for a physical slot.
    pub database: Option<String>,
    /// Whether a connection streams from it now.
    pub active: bool,
    /// The oldest WAL position the slot still needs.
    pub restart_lsn: Option<Lsn>,
    /// The position acknowledged as flushed: a restart resumes after it.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// Bytes of WAL the slot keeps the server from removing (from its restart position to
    /// the server's current one).
    pub retained_bytes: Option<u64>,
}

/// Looks up slot `name`; `None` if it does not exist.
pub async fn slot_info(connection: &mut PgConnection, name: &str) -> Result<Option<SlotInfo>> {
    let error = |source| Error::Sql {
        what: "looking up the replication slot",
        source,
    };
    let row = sqlx::query(
        "SELECT slot_name::text, plugin::text, database::text, active, restart_lsn::text, \
                confirmed_flush_lsn::text, wal_status::text, \
                pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                                     ELSE pg_current_wal_lsn() END, restart_lsn)::int8 \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(name)
    .fetch_optional(connection)
    .await
    .map_err(error)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let lsn = |index: usize| -> sqlx::Result<Option<Lsn>> {
        Ok(row
            .try_get::<Option<String>, _>(index)?
            .and_then(|text| text.parse().ok()))
    };
    Ok(Some(SlotInfo {
        name: row.try_get(0).map_err(error)?,
        plugin: row.try_get(1).map_err(error)?,
        database: row.try_get(2).map_err(error)?,
        active: row.try_get(3).map_err(error)?,
        restart_lsn: lsn(4).map_err(error)?,
        confirmed_flush_lsn: lsn(5).map_err(error)?,
        wal_status: row.try_get(6).map_err(error)?,
        retained_bytes: row
            .try_get::<Option<i64>, _>(7)
            .map_err(error)?
            .map(|bytes| u64::try_from(bytes).unwrap_or(0)),
    }))
}

/// Drops slot `name` through SQL (`pg_drop_replication_slot`); `false` if it did not exist.
/// Fails if a connection streams from it.
pub async fn drop_slot(connection: &mut PgConnection, name: &str) -> Result<bool> {
    let dropped: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = $1) AS dropped",
    )
    .bind(name)
    .fetch_optional(connection)
    .await
    .map_err(|source| Error::Sql {
        what: "dropping the replication slot",
        source,
    })?;
    Ok(dropped.is_some())
}

fn push_tables(sql: &mut String, tables: &[TableRef]) {
    for (index, table) in tables.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        push_identifier(sql, &table.schema);
        sql.push('.');
        push_identifier(sql, &table.name);
    }
}

fn push_identifier(sql: &mut String, name: &str) {
    sql.push('"');
    sql.push_str(&name.replace('"', "\"\""));
    sql.push('"');
}
