-- Change data capture runs: where the run stands (phase, checkpoint, lag) as its gateway
-- last reported it, and its replication slot as last inspected while the task was stopped.
-- JSON; positions and counts only. NULL for full loads.
ALTER TABLE task_runs ADD COLUMN replication TEXT;
