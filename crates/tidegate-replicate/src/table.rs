//! Names and schemas of the tables that flow from sources to sinks.

use std::fmt;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

/// A table's qualified name. SQLite tables live in schema `main`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    /// The schema (namespace) holding the table.
    pub schema: String,
    /// The table's name within its schema.
    pub name: String,
}

impl TableRef {
    /// A table reference from its schema and name.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

/// Displays as `schema.name`, without quoting.
impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A table and the Arrow schema every one of its record batches has.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// The table.
    pub table: TableRef,
    /// The Arrow schema of its rows; field order is the column order.
    pub schema: SchemaRef,
}
