//! The per-table read plans a source works out at discovery and reuses for every read.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::table::{TableRef, TableSchema};

/// A read plan that knows the schema it reads.
pub(crate) trait Plan {
    fn schema(&self) -> &TableSchema;
}

/// The plans of the last discovery, by table.
///
/// Invariant: a plan is handed out only for a schema equal to the one the caller holds, so a
/// table changed since discovery fails with [`Error::SchemaMismatch`] instead of reading
/// columns the caller does not expect.
pub(crate) struct PlanCache<P> {
    plans: Mutex<HashMap<TableRef, Arc<P>>>,
}

impl<P: Plan> PlanCache<P> {
    pub(crate) fn new() -> Self {
        PlanCache {
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the cache with the plans of a new discovery and returns them.
    pub(crate) fn replace(&self, plans: Vec<Arc<P>>) -> Vec<Arc<P>> {
        let mut cache = self.plans.lock().expect("plan cache poisoned");
        cache.clear();
        for plan in &plans {
            cache.insert(plan.schema().table.clone(), Arc::clone(plan));
        }
        plans
    }

    /// The plan of `table`, discovering again (with `discover`, which is expected to call
    /// [`replace`](Self::replace)) when it is not cached, checked against the schema the
    /// caller holds.
    pub(crate) async fn plan_for<F>(&self, table: &TableSchema, discover: F) -> Result<Arc<P>>
    where
        F: Future<Output = Result<Vec<Arc<P>>>>,
    {
        let cached = self
            .plans
            .lock()
            .expect("plan cache poisoned")
            .get(&table.table)
            .cloned();
        let plan = match cached {
            Some(plan) => plan,
            None => discover
                .await?
                .into_iter()
                .find(|plan| plan.schema().table == table.table)
                .ok_or_else(|| Error::UnknownTable {
                    name: table.table.to_string(),
                })?,
        };
        if plan.schema().schema != table.schema {
            return Err(Error::SchemaMismatch {
                table: table.table.to_string(),
            });
        }
        Ok(plan)
    }
}
