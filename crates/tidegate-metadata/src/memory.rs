//! [`MemoryStore`]: the synchronous in-memory store the control plane uses until it moves to
//! [`SqlStore`](crate::SqlStore).

use std::collections::HashMap;
use std::sync::Mutex;

use tidegate_proto::TaskState;

use crate::{Connection, ConnectionView, DataTask, Error, Gateway, TaskRun};

/// The metadata of one control plane, in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    gateways: HashMap<String, Gateway>,
    connections: HashMap<String, Connection>,
    tasks: HashMap<String, DataTask>,
    runs: HashMap<String, TaskRun>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock cannot leave the maps half-updated: every mutation
        // below is a single insert or field assignment. So a poisoned lock is still usable.
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Adds a gateway.
    pub fn insert_gateway(&self, gateway: Gateway) {
        self.with(|i| i.gateways.insert(gateway.id.clone(), gateway));
    }

    /// A gateway by id.
    pub fn gateway(&self, id: &str) -> Result<Gateway, Error> {
        self.with(|i| i.gateways.get(id).cloned())
            .ok_or_else(|| not_found("gateway", id))
    }

    /// All gateways, by id.
    pub fn gateways(&self) -> Vec<Gateway> {
        let mut all: Vec<_> = self.with(|i| i.gateways.values().cloned().collect());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Changes a gateway in place.
    pub fn update_gateway<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Gateway) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.with(|i| match i.gateways.get_mut(id) {
            Some(g) => f(g),
            None => Err(not_found("gateway", id)),
        })
    }

    /// Finds the gateway whose unused enrollment token has this digest.
    pub fn gateway_by_enrollment(&self, digest: &[u8; 32]) -> Option<Gateway> {
        self.with(|i| {
            i.gateways
                .values()
                .find(|g| g.enrollment_digest.as_ref() == Some(digest))
                .cloned()
        })
    }

    /// Adds a connection.
    pub fn insert_connection(&self, connection: Connection) {
        self.with(|i| i.connections.insert(connection.id.clone(), connection));
    }

    /// A connection by id, with its secrets (for sending to a gateway only).
    pub fn connection(&self, id: &str) -> Result<Connection, Error> {
        self.with(|i| i.connections.get(id).cloned())
            .ok_or_else(|| not_found("connection", id))
    }

    /// All connections, redacted.
    pub fn connection_views(&self) -> Vec<ConnectionView> {
        let mut all: Vec<_> =
            self.with(|i| i.connections.values().map(ConnectionView::from).collect());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Adds a task.
    pub fn insert_task(&self, task: DataTask) {
        self.with(|i| i.tasks.insert(task.id.clone(), task));
    }

    /// A task by id.
    pub fn task(&self, id: &str) -> Result<DataTask, Error> {
        self.with(|i| i.tasks.get(id).cloned())
            .ok_or_else(|| not_found("task", id))
    }

    /// Adds a run.
    pub fn insert_run(&self, run: TaskRun) {
        self.with(|i| i.runs.insert(run.id.clone(), run));
    }

    /// A run by id.
    pub fn run(&self, id: &str) -> Result<TaskRun, Error> {
        self.with(|i| i.runs.get(id).cloned())
            .ok_or_else(|| not_found("run", id))
    }

    /// The runs of a task that are starting or running.
    pub fn active_runs(&self, task_id: &str) -> Vec<TaskRun> {
        self.with(|i| {
            i.runs
                .values()
                .filter(|r| {
                    r.task_id == task_id
                        && matches!(r.state, TaskState::Starting | TaskState::Running)
                })
                .cloned()
                .collect()
        })
    }

    /// Changes a run in place.
    pub fn update_run(&self, id: &str, f: impl FnOnce(&mut TaskRun)) -> Result<(), Error> {
        self.with(|i| match i.runs.get_mut(id) {
            Some(r) => {
                f(r);
                Ok(())
            }
            None => Err(not_found("run", id)),
        })
    }
}

fn not_found(kind: &'static str, id: &str) -> Error {
    Error::NotFound {
        kind,
        id: id.to_owned(),
    }
}
