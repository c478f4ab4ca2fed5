-- Tidegate metadata, SQLite flavour. Keep it in step with ../postgres/0001_metadata.sql:
-- same tables, columns, constraint names and semantics; only types and trigger syntax differ
-- (BLOB for BYTEA, INTEGER 0/1 for BOOLEAN).
-- Times are Unix milliseconds (BIGINT); ids are text made in Rust; JSON is stored as text.

CREATE TABLE tenants (
    id            TEXT   NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    CONSTRAINT tenants_name_key UNIQUE (name)
);

CREATE TABLE data_spaces (
    id            TEXT   NOT NULL PRIMARY KEY,
    tenant_id     TEXT   NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    name          TEXT   NOT NULL,
    description   TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    CONSTRAINT data_spaces_tenant_name_key UNIQUE (tenant_id, name),
    CONSTRAINT data_spaces_tenant_id_key UNIQUE (tenant_id, id)
);

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    tenant_id     TEXT    NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    username      TEXT    NOT NULL,
    display_name  TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    password_hash TEXT,
    oidc_issuer   TEXT,
    oidc_subject  TEXT,
    disabled      INTEGER NOT NULL CHECK (disabled IN (0, 1)),
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL,
    version       BIGINT  NOT NULL,
    CONSTRAINT users_tenant_username_key UNIQUE (tenant_id, username),
    CONSTRAINT users_oidc_key UNIQUE (oidc_issuer, oidc_subject),
    CONSTRAINT users_tenant_id_key UNIQUE (tenant_id, id),
    CONSTRAINT users_oidc_pair CHECK ((oidc_issuer IS NULL) = (oidc_subject IS NULL))
);

CREATE TABLE user_system_roles (
    user_id       TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role          TEXT   NOT NULL,
    granted_at_ms BIGINT NOT NULL,
    CONSTRAINT user_system_roles_pkey PRIMARY KEY (user_id, role)
);

CREATE TABLE space_roles (
    id            TEXT   NOT NULL PRIMARY KEY,
    tenant_id     TEXT   NOT NULL,
    user_id       TEXT   NOT NULL,
    space_id      TEXT   NOT NULL,
    role          TEXT   NOT NULL,
    granted_at_ms BIGINT NOT NULL,
    CONSTRAINT space_roles_user_space_role_key UNIQUE (user_id, space_id, role),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, space_id) REFERENCES data_spaces (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX space_roles_space ON space_roles (space_id, granted_at_ms, id);
CREATE INDEX space_roles_user ON space_roles (user_id, granted_at_ms, id);

CREATE TABLE login_sessions (
    id            TEXT   NOT NULL PRIMARY KEY,
    user_id       TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_sha256  BLOB   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    CONSTRAINT login_sessions_token_key UNIQUE (token_sha256)
);
CREATE INDEX login_sessions_user ON login_sessions (user_id, created_at_ms, id);
CREATE INDEX login_sessions_expiry ON login_sessions (expires_at_ms);

CREATE TABLE tenant_data_keys (
    tenant_id        TEXT    NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    version          BIGINT  NOT NULL CHECK (version > 0),
    kek_id           TEXT    NOT NULL,
    wrapped_key      BLOB    NOT NULL,
    active           INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at_ms    BIGINT  NOT NULL,
    rewrapped_at_ms  BIGINT,
    CONSTRAINT tenant_data_keys_pkey PRIMARY KEY (tenant_id, version)
);
-- At most one active data key per tenant.
CREATE UNIQUE INDEX tenant_data_keys_one_active ON tenant_data_keys (tenant_id) WHERE active = 1;

CREATE TABLE gateways (
    id                       TEXT   NOT NULL PRIMARY KEY,
    tenant_id                TEXT   NOT NULL,
    space_id                 TEXT   NOT NULL,
    name                     TEXT   NOT NULL,
    state                    TEXT   NOT NULL
        CHECK (state IN ('pending_enrollment', 'active', 'deactivated', 'outdated')),
    state_reason             TEXT,
    public_key               TEXT,
    software                 TEXT,
    metrics                  TEXT,
    last_seen_at_ms          BIGINT,
    enrollment_sha256        BLOB,
    enrollment_expires_at_ms BIGINT,
    created_at_ms            BIGINT NOT NULL,
    updated_at_ms            BIGINT NOT NULL,
    version                  BIGINT NOT NULL,
    CONSTRAINT gateways_space_name_key UNIQUE (space_id, name),
    CONSTRAINT gateways_space_id_key UNIQUE (space_id, id),
    CONSTRAINT gateways_enrollment_key UNIQUE (enrollment_sha256),
    FOREIGN KEY (tenant_id, space_id) REFERENCES data_spaces (tenant_id, id) ON DELETE RESTRICT
);

CREATE TABLE connections (
    id                 TEXT   NOT NULL PRIMARY KEY,
    tenant_id          TEXT   NOT NULL,
    space_id           TEXT   NOT NULL,
    name               TEXT   NOT NULL,
    kind               TEXT   NOT NULL,
    settings           TEXT   NOT NULL,
    sealed_credentials BLOB,
    data_key_version   BIGINT,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    version            BIGINT NOT NULL,
    CONSTRAINT connections_space_name_key UNIQUE (space_id, name),
    CONSTRAINT connections_space_id_key UNIQUE (space_id, id),
    CONSTRAINT connections_sealed_pair
        CHECK ((sealed_credentials IS NULL) = (data_key_version IS NULL)),
    FOREIGN KEY (tenant_id, space_id) REFERENCES data_spaces (tenant_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (tenant_id, data_key_version)
        REFERENCES tenant_data_keys (tenant_id, version) ON DELETE RESTRICT
);

CREATE TABLE data_tasks (
    id                   TEXT   NOT NULL PRIMARY KEY,
    tenant_id            TEXT   NOT NULL,
    space_id             TEXT   NOT NULL,
    name                 TEXT   NOT NULL,
    task_type            TEXT   NOT NULL
        CHECK (task_type IN ('full_load', 'change_data_capture', 'store_changes')),
    source_connection_id TEXT   NOT NULL,
    target_connection_id TEXT   NOT NULL,
    gateway_id           TEXT   NOT NULL,
    include_tables       TEXT   NOT NULL,
    exclude_tables       TEXT   NOT NULL,
    schedule             TEXT,
    created_at_ms        BIGINT NOT NULL,
    updated_at_ms        BIGINT NOT NULL,
    version              BIGINT NOT NULL,
    CONSTRAINT data_tasks_space_name_key UNIQUE (space_id, name),
    FOREIGN KEY (tenant_id, space_id) REFERENCES data_spaces (tenant_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (space_id, source_connection_id)
        REFERENCES connections (space_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (space_id, target_connection_id)
        REFERENCES connections (space_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (space_id, gateway_id) REFERENCES gateways (space_id, id) ON DELETE RESTRICT
);
CREATE INDEX data_tasks_source ON data_tasks (space_id, source_connection_id);
CREATE INDEX data_tasks_target ON data_tasks (space_id, target_connection_id);
CREATE INDEX data_tasks_gateway ON data_tasks (space_id, gateway_id);

CREATE TABLE task_runs (
    id            TEXT   NOT NULL PRIMARY KEY,
    task_id       TEXT   NOT NULL REFERENCES data_tasks (id) ON DELETE CASCADE,
    state         TEXT   NOT NULL
        CHECK (state IN ('starting', 'running', 'completed', 'stopped', 'failed')),
    tables        TEXT   NOT NULL,
    error         TEXT,
    started_at_ms BIGINT NOT NULL,
    ended_at_ms   BIGINT,
    updated_at_ms BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    CONSTRAINT task_runs_task_id_key UNIQUE (task_id, id)
);
CREATE INDEX task_runs_task ON task_runs (task_id, started_at_ms, id);
-- At most one starting or running run per task: two control planes cannot both start one.
CREATE UNIQUE INDEX task_runs_one_active ON task_runs (task_id)
    WHERE state IN ('starting', 'running');

CREATE TABLE schema_snapshots (
    id          TEXT   NOT NULL PRIMARY KEY,
    task_id     TEXT   NOT NULL REFERENCES data_tasks (id) ON DELETE CASCADE,
    run_id      TEXT   NOT NULL,
    table_name  TEXT   NOT NULL,
    schema_json TEXT   NOT NULL,
    taken_at_ms BIGINT NOT NULL,
    FOREIGN KEY (task_id, run_id) REFERENCES task_runs (task_id, id) ON DELETE CASCADE
);
CREATE INDEX schema_snapshots_task ON schema_snapshots (task_id, taken_at_ms, id);
CREATE INDEX schema_snapshots_run ON schema_snapshots (run_id);

-- The audit log outlives what it names: no foreign keys, and rows are never changed.
CREATE TABLE audit_log (
    id          TEXT   NOT NULL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    tenant_id   TEXT   NOT NULL,
    space_id    TEXT,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    target_kind TEXT   NOT NULL,
    target_id   TEXT,
    source_addr TEXT,
    outcome     TEXT   NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    detail      TEXT   NOT NULL
);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant_id, at_ms, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- Lists are keyset-paginated by (creation time, id) within their parent.
CREATE INDEX tenants_list ON tenants (created_at_ms, id);
CREATE INDEX data_spaces_list ON data_spaces (tenant_id, created_at_ms, id);
CREATE INDEX users_list ON users (tenant_id, created_at_ms, id);
CREATE INDEX gateways_list ON gateways (space_id, created_at_ms, id);
CREATE INDEX connections_list ON connections (space_id, created_at_ms, id);
CREATE INDEX data_tasks_list ON data_tasks (space_id, created_at_ms, id);
