//! A TPC-H-like `lineitem` table, generated inside PostgreSQL, for benchmarks.
//!
//! The columns and types are TPC-H's; the values are deterministic functions of the row
//! number with TPC-H's ranges and cardinalities (not dbgen's exact distributions). Scale
//! factor 1 is 6,000,000 rows.

/// SQL that creates `lineitem` with `rows` rows and vacuums it (so the first read does not
/// pay for setting hint bits).
pub fn lineitem_sql(rows: u64) -> String {
    format!(
        "CREATE TABLE lineitem (
            l_orderkey      bigint        NOT NULL,
            l_partkey       integer       NOT NULL,
            l_suppkey       integer       NOT NULL,
            l_linenumber    integer       NOT NULL,
            l_quantity      numeric(15,2) NOT NULL,
            l_extendedprice numeric(15,2) NOT NULL,
            l_discount      numeric(15,2) NOT NULL,
            l_tax           numeric(15,2) NOT NULL,
            l_returnflag    char(1)       NOT NULL,
            l_linestatus    char(1)       NOT NULL,
            l_shipdate      date          NOT NULL,
            l_commitdate    date          NOT NULL,
            l_receiptdate   date          NOT NULL,
            l_shipinstruct  char(25)      NOT NULL,
            l_shipmode      char(10)      NOT NULL,
            l_comment       varchar(44)   NOT NULL
        );
        INSERT INTO lineitem
        SELECT g / 4 + 1,
               (g * 7919) % 200000 + 1,
               (g * 104729) % 10000 + 1,
               g % 4 + 1,
               ((g * 31) % 50 + 1)::numeric(15,2),
               (((g * 7919) % 9000000) / 100.0 + 900)::numeric(15,2),
               ((g % 11) / 100.0)::numeric(15,2),
               ((g % 9) / 100.0)::numeric(15,2),
               (ARRAY['A','N','R'])[g % 3 + 1],
               (ARRAY['F','O'])[g % 2 + 1],
               date '1992-01-02' + ((g * 37) % 2526)::int,
               date '1992-01-02' + ((g * 37) % 2526)::int + (g % 61 - 30)::int,
               date '1992-01-02' + ((g * 37) % 2526)::int + (g % 30 + 1)::int,
               (ARRAY['DELIVER IN PERSON','COLLECT COD','NONE','TAKE BACK RETURN'])[g % 4 + 1],
               (ARRAY['REG AIR','AIR','RAIL','SHIP','TRUCK','MAIL','FOB'])[g % 7 + 1],
               substr('carefully final deposits detect slyly agai quickly regular packages '
                      'wake blithely ironic foxes sleep furiously', ((g * 13) % 50)::int + 1,
                      10 + (g % 34)::int)
        FROM generate_series(0::bigint, {last}) AS g;
        VACUUM (FREEZE, ANALYZE) lineitem;",
        last = rows.saturating_sub(1)
    )
}
