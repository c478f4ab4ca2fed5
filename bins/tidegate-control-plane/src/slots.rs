//! Replication slot hygiene. A change data capture task that is stopped or failed keeps its
//! replication slot at the source, so that it can resume without a gap; the slot makes the
//! source keep every WAL segment written since. Every
//! [`slot_check_interval`](crate::ControlPlaneConfig::slot_check_interval) the control plane
//! has the gateway of each such task (when it is connected here) inspect the slot, records
//! what it found on the task's latest run, and warns when the slot retains more than
//! [`slot_retention_limit`](crate::ControlPlaneConfig::slot_retention_limit) bytes or is gone.

use std::sync::Arc;
use std::time::Duration;

use tidegate_metadata::{MetadataStore, RunReplication, TaskRunRecord};
use tidegate_proto::{Command, CommandOutcome, SlotReport};

use crate::Shared;

/// How long a gateway has to inspect a slot.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Inspects the slots of idle change data capture tasks until shutdown.
pub(crate) async fn watch(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.config.slot_check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => check_all(&shared).await,
            () = shared.shutdown.cancelled() => return,
        }
    }
}

async fn check_all(shared: &Shared) {
    let runs = match shared.store.idle_capture_runs(&shared.tenant_id).await {
        Ok(runs) => runs,
        Err(error) => {
            tracing::warn!(message = "idle replication slots not inspected", %error);
            return;
        }
    };
    for run in runs {
        if shared.shutdown.is_cancelled() {
            return;
        }
        check(shared, run).await;
    }
}

/// Why a slot needs attention, if it does.
pub(crate) fn slot_warning(
    slot: Option<&SlotReport>,
    streamed: bool,
    limit: u64,
) -> Option<String> {
    match slot {
        None if streamed => Some(
            "the replication slot is gone: the task cannot resume without a gap; delete it and \
             create it again for a new initial load"
                .to_owned(),
        ),
        None => None,
        Some(slot) if slot.wal_status.as_deref() == Some("lost") => Some(format!(
            "replication slot {} lost WAL it needed: the task cannot resume without a gap",
            slot.name
        )),
        Some(slot) => match slot.retained_bytes {
            Some(retained) if retained > limit => Some(format!(
                "replication slot {} keeps {retained} bytes of WAL at the source (limit \
                 {limit}): resume the task, or delete it to drop the slot",
                slot.name
            )),
            _ => None,
        },
    }
}

async fn check(shared: &Shared, run: TaskRunRecord) {
    let Ok(task) = shared.task(&run.task_id).await else {
        return;
    };
    if !shared.sessions.is_online(&task.gateway_id) {
        return;
    }
    let source = async { shared.spec(shared.connection(&task.source_connection_id).await?) };
    let source = match source.await {
        Ok(spec) => spec,
        Err(error) => {
            tracing::warn!(message = "replication slot not inspected", task = %task.id, error = %error.message());
            return;
        }
    };
    let command = Command::InspectReplication {
        task_id: task.id.clone(),
        source,
    };
    let slot = match shared
        .sessions
        .command(&task.gateway_id, command, INSPECT_TIMEOUT)
        .await
    {
        Ok(result) => match result.outcome {
            Ok(CommandOutcome::Slot(slot)) => slot,
            Ok(_) => return,
            Err(report) => {
                tracing::warn!(message = "replication slot not inspected", task = %task.id, error = %report.message);
                return;
            }
        },
        Err(error) => {
            tracing::warn!(message = "replication slot not inspected", task = %task.id, %error);
            return;
        }
    };
    let mut replication = run.replication.clone().unwrap_or_default();
    let streamed = replication.checkpoint_lsn.is_some();
    let warning = slot_warning(slot.as_ref(), streamed, shared.config.slot_retention_limit);
    if let Some(warning) = &warning
        && replication.warning.as_ref() != Some(warning)
    {
        tracing::warn!(message = "replication slot needs attention", task = %task.id, %warning);
    }
    replication = RunReplication {
        slot,
        slot_checked_at_ms: Some(crate::api::now_ms()),
        warning,
        ..replication
    };
    if let Err(error) = shared
        .store
        .record_run_replication(&run.id, &replication)
        .await
    {
        tracing::warn!(message = "replication slot inspection not recorded", run = %run.id, %error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(retained: Option<u64>, wal_status: &str) -> SlotReport {
        SlotReport {
            name: "tidegate_task_1".into(),
            active: false,
            retained_bytes: retained,
            wal_status: Some(wal_status.into()),
        }
    }

    #[test]
    fn a_slot_warns_past_the_limit_when_lost_or_gone_after_streaming() {
        assert_eq!(
            slot_warning(Some(&slot(Some(10), "reserved")), true, 10),
            None
        );
        let over = slot_warning(Some(&slot(Some(11), "reserved")), true, 10).unwrap();
        assert!(
            over.contains("11 bytes") && over.contains("limit 10"),
            "{over}"
        );
        assert!(slot_warning(Some(&slot(None, "lost")), true, 10).is_some());
        assert!(slot_warning(None, true, 10).unwrap().contains("gone"));
        assert_eq!(slot_warning(None, false, 10), None);
    }
}
