-- Per-tenant settings an administrator changes through the API (for example whether the
-- AI assist is on), as JSON values by name. They go with their tenant.
CREATE TABLE tenant_settings (
    tenant_id     TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          TEXT   NOT NULL,
    value         TEXT   NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
