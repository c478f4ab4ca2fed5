//! A deterministic sample SQLite database for demos, tests and benchmarks.
//!
//! Three tables, 1,000,000 rows by default (10% `customers`, 60% `orders`, 30% `events`),
//! covering every type [`SqliteSource`](crate::SqliteSource) maps: `INTEGER`, `DECIMAL(12,2)`
//! (inserted as text; SQLite's `NUMERIC` affinity stores it as INTEGER or REAL), `REAL`,
//! `TEXT` with non-ASCII characters, `TIMESTAMP` both as ISO-8601 text with microseconds and as
//! Unix seconds, `DATE`, `BOOLEAN`, `BLOB`, and `NULL`s in several columns. The same size always
//! gives the same rows. Rows are produced inside SQLite by recursive CTEs in one transaction
//! with journaling and syncing off, so a million rows take a few seconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use crate::error::{Error, Result};

/// How many rows the sample database gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSize {
    /// Rows of `customers`.
    pub customers: u64,
    /// Rows of `orders`.
    pub orders: u64,
    /// Rows of `events`.
    pub events: u64,
}

impl SampleSize {
    /// About `total` rows split 10% / 60% / 30%, with at least one customer.
    pub fn rows(total: u64) -> Self {
        let customers = (total / 10).max(1);
        let orders = total / 10 * 6;
        Self {
            customers,
            orders,
            events: total.saturating_sub(customers + orders),
        }
    }

    /// Rows over all tables.
    pub fn total(&self) -> u64 {
        self.customers + self.orders + self.events
    }
}

impl Default for SampleSize {
    /// 1,000,000 rows: 100,000 customers, 600,000 orders, 300,000 events.
    fn default() -> Self {
        Self::rows(1_000_000)
    }
}

/// What [`generate_sqlite`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SampleSummary {
    /// The database file.
    pub path: PathBuf,
    /// Each table with its row count, in creation order.
    pub tables: Vec<(String, u64)>,
    /// Time taken.
    pub elapsed: Duration,
}

impl SampleSummary {
    /// Rows over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|(_, rows)| rows).sum()
    }
}

const SCHEMA: &str = "
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email VARCHAR(255),
    country CHAR(2) NOT NULL,
    balance DECIMAL(12,2),
    created_at TIMESTAMP NOT NULL,
    is_active BOOLEAN,
    avatar BLOB
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    ordered_at TIMESTAMP NOT NULL,
    status TEXT NOT NULL,
    total DECIMAL(12,2) NOT NULL,
    shipped BOOLEAN NOT NULL,
    ship_date DATE,
    note TEXT
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    order_id INTEGER,
    kind TEXT NOT NULL,
    score REAL,
    occurred_at TIMESTAMP,
    payload BLOB
);
";

/// Creates the sample database at `path` with `size` rows.
///
/// Refuses to touch an existing file ([`Error::SampleExists`]). Not cancel-safe: dropping the
/// future may leave a partial database file behind.
pub async fn generate_sqlite(path: &Path, size: SampleSize) -> Result<SampleSummary> {
    let started = Instant::now();
    if path.exists() {
        return Err(Error::SampleExists {
            path: path.to_path_buf(),
        });
    }
    let failed = |source| Error::Sample {
        path: path.to_path_buf(),
        source,
    };
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Off)
        .synchronous(SqliteSynchronous::Off)
        .disable_statement_logging()
        .connect()
        .await
        .map_err(failed)?;

    let customers = size.customers.max(1);
    let statements = [
        SCHEMA.to_owned(),
        format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 WHERE {customers} > 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {customers})
             INSERT INTO customers
             SELECT n,
                    'Customer ' || n || CASE n % 5
                        WHEN 0 THEN ' Ñandú' WHEN 1 THEN ' 東京' WHEN 2 THEN ' Zoë 🌊' ELSE '' END,
                    CASE WHEN n % 10 = 0 THEN NULL ELSE 'user' || n || '@example.com' END,
                    substr('USDEFRJPBRINGBCA', 1 + 2 * (n % 8), 2),
                    CASE WHEN n % 13 = 0 THEN NULL
                         ELSE printf('%d.%02d', (n * 7919) % 1000000 - 500000, (n * 31) % 100) END,
                    CASE WHEN n % 4 = 0 THEN 1500000000 + n * 37
                         ELSE datetime(1500000000 + n * 37, 'unixepoch')
                              || '.' || printf('%06d', (n * 7919) % 1000000) END,
                    CASE WHEN n % 17 = 0 THEN NULL ELSE n % 3 != 0 END,
                    CASE WHEN n % 4 = 0 THEN NULL
                         ELSE CAST(printf('%08x', (n * 2654435761) % 4294967296) AS BLOB) END
             FROM seq"
        ),
        format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 WHERE {orders} > 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {orders})
             INSERT INTO orders
             SELECT n,
                    1 + (n * 7919) % {customers},
                    datetime(1600000000 + n * 53, 'unixepoch'),
                    CASE n % 4 WHEN 0 THEN 'pending' WHEN 1 THEN 'shipped'
                               WHEN 2 THEN 'delivered' ELSE 'cancelled' END,
                    printf('%d.%02d', (n * 104729) % 100000, n % 100),
                    n % 4 IN (1, 2),
                    CASE WHEN n % 4 IN (1, 2) THEN date(1600000000 + n * 53 + 172800, 'unixepoch') END,
                    CASE WHEN n % 9 = 0 THEN 'gift wrap — « fragile »' END
             FROM seq",
            orders = size.orders,
        ),
        format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 WHERE {events} > 0 UNION ALL SELECT n + 1 FROM seq WHERE n < {events})
             INSERT INTO events
             SELECT n,
                    CASE WHEN n % 11 = 0 THEN NULL ELSE 1 + (n * 31) % {orders} END,
                    CASE n % 3 WHEN 0 THEN 'click' WHEN 1 THEN 'view' ELSE 'purchase' END,
                    CASE WHEN n % 6 = 0 THEN NULL ELSE (n % 1000) / 7.0 END,
                    CASE WHEN n % 8 = 0 THEN NULL WHEN n % 2 = 0 THEN 1650000000 + n
                         ELSE datetime(1650000000 + n, 'unixepoch') END,
                    CASE WHEN n % 5 = 0 THEN NULL WHEN n % 5 = 1 THEN x''
                         ELSE CAST(printf('payload-%d', n) AS BLOB) END
             FROM seq",
            events = size.events,
            orders = size.orders.max(1),
        ),
    ];
    let mut transaction = connection.begin().await.map_err(failed)?;
    for statement in statements {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut *transaction)
            .await
            .map_err(failed)?;
    }
    transaction.commit().await.map_err(failed)?;
    connection.close().await.map_err(failed)?;

    Ok(SampleSummary {
        path: path.to_path_buf(),
        tables: vec![
            ("customers".to_owned(), customers),
            ("orders".to_owned(), size.orders),
            ("events".to_owned(), size.events),
        ],
        elapsed: started.elapsed(),
    })
}
