//! Data tasks and their runs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidegate_metadata::{
    DataTaskRecord, MetadataStore, NewDataTask, Page, RunReplication, TableRun, TaskRunRecord,
    TaskType, WriteTx, validate_name,
};
use tidegate_proto::{
    Command, CommandOutcome, TableSelection, TableState, TaskKind, TaskSpec, TaskState,
};
use tidegate_rbac::Action;

use super::{ApiError, Body, Ctx, ListQuery, Query, page_of};
use crate::Shared;

/// How long a gateway has to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// A task as `task_list` (monitoring) shows it: no settings.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TaskSummary {
    id: String,
    space_id: String,
    name: String,
    task_type: TaskType,
    gateway_id: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

/// A task in full, as `task_read` shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TaskView {
    #[serde(flatten)]
    summary: TaskSummary,
    source_id: String,
    target_id: String,
    tables: TableSelection,
    schedule: Option<String>,
    version: i64,
}

impl From<DataTaskRecord> for TaskView {
    fn from(t: DataTaskRecord) -> Self {
        Self {
            source_id: t.source_connection_id.clone(),
            target_id: t.target_connection_id.clone(),
            tables: t.tables.clone(),
            schedule: t.schedule.clone(),
            version: t.version,
            summary: t.into(),
        }
    }
}

impl From<DataTaskRecord> for TaskSummary {
    fn from(t: DataTaskRecord) -> Self {
        Self {
            id: t.id,
            space_id: t.space_id,
            name: t.name,
            task_type: t.task_type,
            gateway_id: t.gateway_id,
            created_at_ms: t.created_at_ms,
            updated_at_ms: t.updated_at_ms,
        }
    }
}

/// A run as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RunView {
    id: String,
    task_id: String,
    state: TaskState,
    tables: BTreeMap<String, TableRun>,
    error: Option<String>,
    /// Milliseconds from its start to its end, or to its last change while it runs.
    elapsed_ms: u64,
    started_s: i64,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    updated_at_ms: i64,
    /// For change data capture: position, lag and slot.
    replication: Option<RunReplication>,
}

impl From<TaskRunRecord> for RunView {
    fn from(r: TaskRunRecord) -> Self {
        let until = r.ended_at_ms.unwrap_or(r.updated_at_ms);
        Self {
            elapsed_ms: u64::try_from(until.saturating_sub(r.started_at_ms)).unwrap_or(0),
            started_s: r.started_at_ms / 1000,
            id: r.id,
            task_id: r.task_id,
            state: r.state,
            tables: r.tables,
            error: r.error,
            started_at_ms: r.started_at_ms,
            ended_at_ms: r.ended_at_ms,
            updated_at_ms: r.updated_at_ms,
            replication: r.replication,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTask {
    space_id: Option<String>,
    name: String,
    gateway_id: String,
    #[serde(alias = "source")]
    source_id: String,
    #[serde(alias = "target")]
    target_id: String,
    task_type: Option<TaskType>,
    #[serde(default)]
    tables: TableSelection,
    schedule: Option<String>,
}

#[utoipa::path(
    operation_id = "tasks_create",
    post,
    path = "/api/v1/tasks",
    tag = "tasks",
    request_body = CreateTask,
    responses((status = 201, description = "The task created", body = TaskView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_create")))
)]
pub(crate) async fn create(
    ctx: Ctx,
    Body(req): Body<CreateTask>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let shared = &ctx.shared;
    let (_, space) = ctx
        .in_space(req.space_id.as_deref(), Action::TaskCreate)
        .await?;
    validate_name("name", &req.name)?;
    // Each reference must exist and be of the task's space; the store checks again.
    let gateway = shared.gateway(&req.gateway_id).await?;
    shared.same_space(&space.id, "gateway_id", &gateway.space_id)?;
    let source = shared.connection(&req.source_id).await?;
    shared.same_space(&space.id, "source_id", &source.space_id)?;
    let target = shared.connection(&req.target_id).await?;
    shared.same_space(&space.id, "target_id", &target.space_id)?;
    let mut tx = shared.store.begin_write().await?;
    let task = tx
        .create_task(&NewDataTask {
            space_id: space.id.clone(),
            name: req.name,
            task_type: req.task_type.unwrap_or(TaskType::FullLoad),
            source_connection_id: req.source_id,
            target_connection_id: req.target_id,
            gateway_id: req.gateway_id,
            tables: req.tables,
            schedule: req.schedule,
        })
        .await?;
    ctx.note(|n| n.target_id = Some(task.id.clone()));
    ctx.commit(tx).await?;
    Ok((StatusCode::CREATED, Json(task.into())))
}

#[utoipa::path(
    operation_id = "tasks_list",
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    params(ListQuery),
    responses((status = 200, description = "A page of tasks, basic details", body = Page<TaskSummary>), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_list")))
)]
pub(crate) async fn list(
    ctx: Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<TaskSummary>>, ApiError> {
    let shared = &ctx.shared;
    let (_, space) = ctx
        .in_space(q.space_id.as_deref(), Action::TaskList)
        .await?;
    let page = shared.store.tasks(&space.id, &q.page()).await?;
    Ok(page_of(page, TaskSummary::from))
}

#[utoipa::path(
    operation_id = "tasks_show",
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task in full", body = TaskView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_read")))
)]
pub(crate) async fn show(ctx: Ctx, Path(id): Path<String>) -> Result<Json<TaskView>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::TaskRead, Some(&task.space_id))
        .await?;
    Ok(Json(task.into()))
}

/// A change to a task. Absent fields stay as they are; `schedule: null` removes the schedule.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTask {
    name: Option<String>,
    gateway_id: Option<String>,
    #[serde(alias = "source")]
    source_id: Option<String>,
    #[serde(alias = "target")]
    target_id: Option<String>,
    task_type: Option<TaskType>,
    tables: Option<TableSelection>,
    #[serde(default, deserialize_with = "super::present")]
    schedule: Option<Option<String>>,
    /// The version the change was made against; a newer stored version refuses it (409).
    version: Option<i64>,
}

/// Changes a task. A run already going keeps what it was started with; the next run uses the
/// change.
#[utoipa::path(
    operation_id = "tasks_update",
    patch,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    request_body = UpdateTask,
    responses((status = 200, description = "The task changed", body = TaskView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_update")))
)]
pub(crate) async fn update(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<UpdateTask>,
) -> Result<Json<TaskView>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::TaskUpdate, Some(&task.space_id))
        .await?;
    // Checked once: a task's data space never changes.
    if let Some(name) = &req.name {
        validate_name("name", name)?;
    }
    for (field, id, connection) in [
        ("gateway_id", &req.gateway_id, false),
        ("source_id", &req.source_id, true),
        ("target_id", &req.target_id, true),
    ] {
        if let Some(id) = id {
            let of = if connection {
                shared.connection(id).await?.space_id
            } else {
                shared.gateway(id).await?.space_id
            };
            shared.same_space(&task.space_id, field, &of)?;
        }
    }
    let changed = ctx
        .change(&id, req.version, task, |mut changed| {
            if let Some(name) = &req.name {
                changed.name.clone_from(name);
            }
            if let Some(gateway_id) = &req.gateway_id {
                changed.gateway_id.clone_from(gateway_id);
            }
            if let Some(source_id) = &req.source_id {
                changed.source_connection_id.clone_from(source_id);
            }
            if let Some(target_id) = &req.target_id {
                changed.target_connection_id.clone_from(target_id);
            }
            if let Some(task_type) = req.task_type {
                changed.task_type = task_type;
            }
            if let Some(tables) = &req.tables {
                changed.tables = tables.clone();
            }
            if let Some(schedule) = &req.schedule {
                changed.schedule.clone_from(schedule);
            }
            Ok(changed)
        })
        .await?;
    Ok(Json(changed.into()))
}

impl super::Versioned for DataTaskRecord {
    fn version(&self) -> i64 {
        self.version
    }

    async fn read(tx: &mut WriteTx, id: &str) -> Result<Self, tidegate_metadata::Error> {
        tx.task(id).await
    }

    async fn write(tx: &mut WriteTx, changed: &Self) -> Result<Self, tidegate_metadata::Error> {
        tx.update_task(changed).await
    }
}

/// Deletes a task that is not running, with its runs. A change data capture task's gateway
/// first drops its replication slot and publication at the source, so the source stops
/// keeping WAL for it; if that cannot be done now the task is kept (409) unless `force`.
#[utoipa::path(
    operation_id = "tasks_delete",
    delete,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id"), DeleteQuery),
    responses((status = 204, description = "Deleted (for change data capture: its replication slot and publication dropped at the source first)"), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_delete")))
)]
pub(crate) async fn delete(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::TaskDelete, Some(&task.space_id))
        .await?;
    if task.task_type != TaskType::FullLoad && !query.force {
        shared.drop_replication(&task).await?;
    }
    let mut tx = shared.store.begin_write().await?;
    tx.delete_task(&task.id).await?;
    ctx.commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Options of `DELETE /tasks/{id}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    /// Delete a change data capture task even if its gateway cannot drop its replication
    /// slot and publication now (offline, or the source unreachable). The slot then keeps
    /// WAL at the source until it is dropped by hand (`tidegate_` and the task id).
    #[serde(default)]
    force: bool,
}

/// The kind of run a task type makes on a gateway.
pub(crate) fn task_kind(task_type: TaskType) -> TaskKind {
    match task_type {
        TaskType::ChangeDataCapture => TaskKind::ChangeDataCapture,
        TaskType::StoreChanges => TaskKind::StoreChanges,
        _ => TaskKind::FullLoad,
    }
}

/// Where a task's data landed, for those who consume it: the target (its kind and where it
/// writes, never its credentials), the tables of the last completed run and, for change data
/// capture, how far the target has come. The control plane holds no data; consumers read it
/// from the target with their own access.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TaskOutput {
    task_id: String,
    target: OutputTarget,
    /// The last completed run, if any. A change data capture run does not complete: see
    /// `replication`.
    run: Option<OutputRun>,
    /// For change data capture and store-changes tasks: where the newest run stands, once
    /// there is one.
    replication: Option<OutputReplication>,
}

/// How far a change data capture or store-changes task has brought its target: positions,
/// lag and the names of tables set apart, never data, and never error texts (those need
/// `run_read`, through the run).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OutputReplication {
    /// The run in progress or, when none is, the newest run.
    run_id: String,
    /// Where that run stands.
    state: TaskState,
    /// The source position the target holds: every change committed before it is there. A
    /// run that has not reported yet shows the position an earlier run reported.
    checkpoint_lsn: Option<String>,
    /// WAL bytes between the checkpoint and the source's position, at the run's last report;
    /// absent until it reports.
    lag_bytes: Option<u64>,
    /// How long the oldest change not yet at the target had been committed, at the run's last
    /// report, in milliseconds; absent until it reports.
    lag_ms: Option<u64>,
    /// Tables whose changes are not at the target until they are resynced, as `schema.name`.
    failed_tables: Vec<String>,
    /// For store changes: the folder of the task's manifests, under the target's `root` or
    /// `bucket` (with the target's current `prefix`). One manifest per commit group, named by
    /// its LSN so that names sort in commit order; the first names the initial load's files,
    /// each later one its change files.
    manifests: Option<String>,
}

impl OutputReplication {
    fn new(
        task: &DataTaskRecord,
        prefix: Option<&str>,
        run: TaskRunRecord,
        earlier_checkpoint: Option<String>,
    ) -> Self {
        let replication = run.replication.unwrap_or_default();
        let reported = replication.reported_at_ms.is_some();
        // The layout of `tidegate_cdc::StoreChangesSink` (`manifest_dir`); prefixes are
        // validated when a connection is saved: no leading, trailing or double `/`.
        let manifests = (task.task_type == TaskType::StoreChanges).then(|| {
            let under = format!("_tidegate/cdc/{}/manifests/", task.id);
            match prefix {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}/{under}"),
                _ => under,
            }
        });
        Self {
            run_id: run.id,
            state: run.state,
            checkpoint_lsn: replication.checkpoint_lsn.or(earlier_checkpoint),
            lag_bytes: reported.then_some(replication.lag_bytes),
            lag_ms: reported.then_some(replication.lag_ms),
            failed_tables: replication
                .failed_tables
                .into_iter()
                .map(|failed| failed.table)
                .collect(),
            manifests,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OutputTarget {
    connection_id: String,
    kind: String,
    /// Where the data is: a bucket and prefix, a directory, or a database and schema.
    location: BTreeMap<String, String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OutputRun {
    run_id: String,
    ended_at_ms: Option<i64>,
    tables: BTreeMap<String, TableRun>,
}

/// The settings that say where a target writes, by kind (no host names or user names beyond
/// what a consumer needs to find the data).
const LOCATION_SETTINGS: &[&str] = &[
    "bucket", "prefix", "region", "endpoint", "root", "database", "schema",
];

#[utoipa::path(
    operation_id = "tasks_output",
    get,
    path = "/api/v1/tasks/{id}/output",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "Where the data landed", body = TaskOutput), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("data_consume")))
)]
pub(crate) async fn output(ctx: Ctx, Path(id): Path<String>) -> Result<Json<TaskOutput>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::DataConsume, Some(&task.space_id))
        .await?;
    let target = shared.connection(&task.target_connection_id).await?;
    let location = target
        .settings
        .iter()
        .filter(|(k, _)| LOCATION_SETTINGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Runs come oldest first. The last completed one is the newest with that state; for change
    // data capture, the run in progress (a resumed run keeps its place among older ones) or
    // else the newest, and the newest checkpoint any run reported.
    let mut last = None;
    let mut newest = None;
    let mut active = None;
    let mut checkpoint = None;
    let mut page = super::page_request(Some(tidegate_metadata::MAX_PAGE_LIMIT), None);
    loop {
        let runs = shared.store.runs(&task.id, &page).await?;
        for run in runs.items {
            if let Some(lsn) = run
                .replication
                .as_ref()
                .and_then(|r| r.checkpoint_lsn.clone())
            {
                checkpoint = Some(lsn);
            }
            match run.state {
                TaskState::Completed => last = Some(run.clone()),
                TaskState::Starting | TaskState::Running => active = Some(run.clone()),
                _ => {}
            }
            newest = Some(run);
        }
        match runs.next {
            Some(next) => page.after = Some(next),
            None => break,
        }
    }
    let replication = match task.task_type {
        TaskType::FullLoad => None,
        TaskType::ChangeDataCapture | TaskType::StoreChanges => active.or(newest).map(|run| {
            OutputReplication::new(
                &task,
                target.settings.get("prefix").map(String::as_str),
                run,
                checkpoint,
            )
        }),
    };
    Ok(Json(TaskOutput {
        task_id: task.id,
        target: OutputTarget {
            connection_id: target.id,
            kind: target.kind,
            location,
        },
        run: last.map(|r| OutputRun {
            run_id: r.id,
            ended_at_ms: r.ended_at_ms,
            tables: r.tables,
        }),
        replication,
    }))
}

/// The query of a task's runs: a page.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunsQuery {
    limit: Option<u32>,
    after: Option<String>,
}

#[utoipa::path(
    operation_id = "tasks_runs",
    get,
    path = "/api/v1/tasks/{id}/runs",
    tag = "runs",
    params(("id" = String, Path, description = "The task's id"), RunsQuery),
    responses((status = 200, description = "A page of the task's runs, oldest first", body = Page<RunView>), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("run_read")))
)]
pub(crate) async fn runs(
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Page<RunView>>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::RunRead, Some(&task.space_id))
        .await?;
    let page = super::page_request(q.limit, q.after.as_deref());
    let page = shared.store.runs(&task.id, &page).await?;
    Ok(page_of(page, RunView::from))
}

#[utoipa::path(
    operation_id = "tasks_start_run",
    post,
    path = "/api/v1/tasks/{id}/runs",
    tag = "runs",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 201, description = "The run started", body = RunView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_run")))
)]
pub(crate) async fn start_run(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::TaskRun, Some(&task.space_id))
        .await?;
    // The database admits one starting-or-running run per task, whichever control plane asks.
    let run = match shared.store.create_run(&task.id).await {
        Ok(run) => run,
        Err(tidegate_metadata::Error::Conflict(_)) => {
            return Err(ApiError::conflict("the task is already running"));
        }
        Err(e) => return Err(e.into()),
    };
    ctx.note(|n| n.detail = json!({"run_id": run.id}));
    shared.send_start(&task, &run.id, Vec::new()).await?;
    Ok((
        StatusCode::CREATED,
        Json(shared.store.run(&run.id).await?.into()),
    ))
}

/// Resumes a failed or stopped run under the same run id: tables it finished (their output is
/// committed) are skipped, every other table is copied again from the start, replacing what
/// the interrupted attempt left.
#[utoipa::path(
    operation_id = "tasks_resume_run",
    post,
    path = "/api/v1/runs/{id}/resume",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 202, description = "The run resumes", body = RunView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_resume")))
)]
pub(crate) async fn resume_run(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let run = shared.store.run(&id).await?;
    let task = shared.task(&run.task_id).await?;
    ctx.note(|n| n.detail = json!({"task_id": task.id}));
    ctx.check(&caller, Action::TaskResume, Some(&task.space_id))
        .await?;
    if !matches!(run.state, TaskState::Failed | TaskState::Stopped) {
        return Err(ApiError::conflict(format!(
            "only a failed or stopped run can be resumed; this one is {:?}",
            run.state
        )));
    }
    let completed: Vec<String> = run
        .tables
        .iter()
        .filter(|(_, table)| table.state == TableState::Done)
        .map(|(name, _)| name.clone())
        .collect();
    // Compare-and-swap on the state read; the database refuses a second active run.
    match shared
        .store
        .transition_run(&id, run.state, TaskState::Starting, None)
        .await
    {
        Ok(_) => {}
        Err(tidegate_metadata::Error::Conflict(message)) => {
            return Err(ApiError::conflict(format!(
                "the run cannot resume: {message}"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    shared.send_start(&task, &id, completed).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(shared.store.run(&id).await?.into()),
    ))
}

#[utoipa::path(
    operation_id = "tasks_stop",
    post,
    path = "/api/v1/tasks/{id}/stop",
    tag = "runs",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 202, description = "The gateway is stopping the run", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_stop")))
)]
pub(crate) async fn stop(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::TaskStop, Some(&task.space_id))
        .await?;
    let result = shared
        .sessions
        .command(
            &task.gateway_id,
            Command::StopTask { task_id: task.id },
            COMMAND_TIMEOUT,
        )
        .await
        .map_err(ApiError::conflict)?;
    match result.outcome {
        Ok(_) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"task_id": id, "state": "stopping"})),
        )),
        Err(report) => Err(ApiError::conflict(report.message)),
    }
}

/// Tables of a running change data capture task to load again alone.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResyncTables {
    /// The tables, as `schema.table`: a table set apart after it failed (see the run's
    /// `replication.failed_tables`) once its cause is fixed, or one changed behind the task's
    /// back.
    tables: Vec<String>,
}

/// Loads tables of a running change data capture task again, alone, in a new snapshot, and
/// applies their changes again from it; the other tables are not loaded again. The run
/// restarts streaming from its checkpoint meanwhile.
#[utoipa::path(
    operation_id = "tasks_resync",
    post,
    path = "/api/v1/tasks/{id}/resync",
    tag = "runs",
    params(("id" = String, Path, description = "The task's id")),
    request_body = ResyncTables,
    responses((status = 202, description = "The run is resyncing the tables", body = serde_json::Value), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("task_resume")))
)]
pub(crate) async fn resync(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<ResyncTables>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let task = shared.task(&id).await?;
    ctx.check(&caller, Action::TaskResume, Some(&task.space_id))
        .await?;
    ctx.note(|n| n.detail = json!({"tables": req.tables}));
    if task.task_type != TaskType::ChangeDataCapture {
        return Err(ApiError::bad_request(
            "only change data capture tasks resync tables alone; start a full load or store \
             changes task again instead",
        ));
    }
    if req.tables.is_empty() {
        return Err(ApiError::bad_request("name at least one table to resync"));
    }
    let command = Command::ResyncTables {
        task_id: task.id.clone(),
        tables: req.tables.clone(),
    };
    if let Some(version) = shared.sessions.version(&task.gateway_id)
        && version < command.min_version()
    {
        return Err(ApiError::conflict(format!(
            "gateway {} speaks protocol {}, which cannot resync tables (protocol {} or later); \
             upgrade the gateway",
            task.gateway_id,
            version.0,
            command.min_version().0
        )));
    }
    let result = shared
        .sessions
        .command(&task.gateway_id, command, COMMAND_TIMEOUT)
        .await
        .map_err(ApiError::conflict)?;
    match result.outcome {
        Ok(_) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"task_id": id, "state": "resyncing", "tables": req.tables})),
        )),
        Err(report) => Err(ApiError::conflict(report.message)),
    }
}

#[utoipa::path(
    operation_id = "tasks_run",
    get,
    path = "/api/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, description = "The run", body = RunView), (status = "4XX", description = "Refused", body = super::ErrorBody)),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("run_read")))
)]
pub(crate) async fn run(ctx: Ctx, Path(id): Path<String>) -> Result<Json<RunView>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let run = shared.store.run(&id).await?;
    let task = shared.task(&run.task_id).await?;
    ctx.check(&caller, Action::RunRead, Some(&task.space_id))
        .await?;
    Ok(Json(run.into()))
}

impl Shared {
    /// A task of this tenant; 404 otherwise.
    pub(crate) async fn task(&self, id: &str) -> Result<DataTaskRecord, ApiError> {
        let task = self.store.task(id).await?;
        if task.tenant_id != self.tenant_id {
            return Err(ApiError::not_found(format!("data task {id} not found")));
        }
        Ok(task)
    }

    /// Refuses a reference (`field`) to an object of another data space than the task's.
    fn same_space(&self, task_space: &str, field: &str, of: &str) -> Result<(), ApiError> {
        if of == task_space {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "{field} must name an object of the task's data space"
            )))
        }
    }

    /// Has the task's gateway drop the task's replication slot and publication at its
    /// source; a conflict saying why if it cannot.
    async fn drop_replication(&self, task: &DataTaskRecord) -> Result<(), ApiError> {
        let refused = |why: String| {
            ApiError::conflict(format!(
                "the replication slot of task {} could not be dropped: {why}; try again when \
                 the gateway is online, or delete with ?force=true and drop the slot \
                 tidegate_{} at the source by hand",
                task.id, task.id
            ))
        };
        let source = self.spec(self.connection(&task.source_connection_id).await?)?;
        let command = Command::DropReplication {
            task_id: task.id.clone(),
            source,
        };
        match self
            .sessions
            .command(&task.gateway_id, command, COMMAND_TIMEOUT)
            .await
        {
            Ok(result) => match result.outcome {
                Ok(CommandOutcome::Slot(slot)) => {
                    tracing::info!(message = "replication slot dropped", task = %task.id, existed = slot.is_some());
                    Ok(())
                }
                Ok(_) => Err(refused("the gateway gave an unexpected answer".to_owned())),
                Err(report) => Err(refused(report.message)),
            },
            Err(why) => Err(refused(why)),
        }
    }

    /// Sends the start command of run `run_id` to the task's gateway; marks the run failed if
    /// the gateway does not accept it.
    async fn send_start(
        &self,
        task: &DataTaskRecord,
        run_id: &str,
        completed_tables: Vec<String>,
    ) -> Result<(), ApiError> {
        let failure = match self.start_command(task, run_id, completed_tables).await {
            Err(e) => Some(e.message.clone()),
            Ok(command) => match self
                .sessions
                .command(&task.gateway_id, command, COMMAND_TIMEOUT)
                .await
            {
                Ok(r) => match r.outcome {
                    Ok(CommandOutcome::Accepted) => None,
                    Ok(_) => Some("gateway gave an unexpected answer".to_owned()),
                    Err(report) => Some(report.message),
                },
                Err(e) => Some(e),
            },
        };
        let Some(message) = failure else {
            return Ok(());
        };
        if let Err(error) = self
            .store
            .transition_run(
                run_id,
                TaskState::Starting,
                TaskState::Failed,
                Some(&message),
            )
            .await
        {
            tracing::warn!(message = "run failure not recorded", run = %run_id, %error);
        }
        Err(ApiError::conflict(format!(
            "the run could not start: {message}"
        )))
    }

    async fn start_command(
        &self,
        task: &DataTaskRecord,
        run_id: &str,
        completed_tables: Vec<String>,
    ) -> Result<Command, ApiError> {
        let kind = task_kind(task.task_type);
        if let Some(version) = self.sessions.version(&task.gateway_id)
            && version < kind.min_version()
        {
            return Err(ApiError::conflict(format!(
                "gateway {} speaks protocol {}, which cannot run {} tasks (protocol {} or \
                 later); upgrade the gateway",
                task.gateway_id,
                version.0,
                task.task_type.as_str(),
                kind.min_version().0
            )));
        }
        let mut target = self.spec(self.connection(&task.target_connection_id).await?)?;
        self.attach_parquet_key(&mut target).await?;
        Ok(Command::StartTask(TaskSpec {
            task_id: task.id.clone(),
            run_id: run_id.to_owned(),
            kind,
            source: self.spec(self.connection(&task.source_connection_id).await?)?,
            target,
            tables: task.tables.clone(),
            completed_tables,
        }))
    }
}
