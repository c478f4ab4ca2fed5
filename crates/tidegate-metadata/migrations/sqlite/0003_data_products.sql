-- Data products: named, described bundles of the outputs of data tasks, offered to the
-- tenant's consumers. Created by Data Product Managers.
CREATE TABLE data_products (
    id            TEXT   NOT NULL PRIMARY KEY,
    tenant_id     TEXT   NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    name          TEXT   NOT NULL,
    description   TEXT   NOT NULL,
    task_ids      TEXT   NOT NULL,
    created_by    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    CONSTRAINT data_products_tenant_name_key UNIQUE (tenant_id, name)
);
