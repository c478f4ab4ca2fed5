//! The generative-AI assist: a per-tenant switch (off until a Data Admin turns it on) and
//! description suggestions for the tables of a connection.
//!
//! A suggestion asks a gateway of the connection's space to discover the tables (names and
//! types only: [`TableDescription`]), turns them into `tidegate_assist::SchemaMetadata` and sends
//! that, and nothing else, to the OpenAI-compatible endpoint configured for the tenant's
//! region. No row value reaches the control plane, so none can reach the model.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tidegate_assist::SchemaMetadata;
use tidegate_metadata::MetadataStore;
use tidegate_proto::{Command, CommandOutcome, TableDescription};
use tidegate_rbac::Action;

use super::{ApiError, Body, Ctx};
use crate::Shared;

/// The tenant setting that holds the switch.
const SETTING: &str = "assist";

/// How long a gateway has to discover the tables.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The tenant's assist switch, and the regions this control plane has an endpoint for.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssistSettings {
    /// Whether the assist may be used. Off by default.
    enabled: bool,
    /// The region whose endpoint is used (the tenant's data residency region).
    region: Option<String>,
    /// The regions with a configured endpoint (read only: ignored on `PUT`, so that what a
    /// `GET` answered can be sent back changed).
    #[serde(default)]
    available_regions: Vec<String>,
}

impl Shared {
    async fn assist_settings(&self) -> Result<AssistSettings, ApiError> {
        let stored = self.store.tenant_setting(&self.tenant_id, SETTING).await?;
        let mut settings = match stored {
            Some(value) => serde_json::from_value(value)
                .map_err(|_| ApiError::internal("the stored assist setting is malformed"))?,
            None => AssistSettings {
                enabled: false,
                region: None,
                available_regions: Vec::new(),
            },
        };
        settings.available_regions = self
            .config
            .assist
            .iter()
            .map(|e| e.region.clone())
            .collect();
        Ok(settings)
    }
}

#[utoipa::path(
    operation_id = "assist_settings",
    get,
    path = "/api/v1/settings/assist",
    tag = "assist",
    responses(
        (status = 200, description = "The tenant's assist switch", body = AssistSettings),
        (status = "4XX", description = "Refused", body = super::ErrorBody)
    ),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("assist_configure")))
)]
pub(crate) async fn settings(ctx: Ctx) -> Result<Json<AssistSettings>, ApiError> {
    let caller = ctx.caller().await?;
    ctx.check(&caller, Action::AssistConfigure, None).await?;
    Ok(Json(ctx.shared.assist_settings().await?))
}

/// Turns the assist on (with the region whose endpoint it uses) or off, for the tenant.
#[utoipa::path(
    operation_id = "assist_configure",
    put,
    path = "/api/v1/settings/assist",
    tag = "assist",
    request_body = AssistSettings,
    responses(
        (status = 200, description = "The switch as set", body = AssistSettings),
        (status = "4XX", description = "Refused", body = super::ErrorBody)
    ),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("assist_configure")))
)]
pub(crate) async fn configure(
    ctx: Ctx,
    Body(mut req): Body<AssistSettings>,
) -> Result<Json<AssistSettings>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    ctx.check(&caller, Action::AssistConfigure, None).await?;
    if req.enabled {
        let Some(region) = &req.region else {
            return Err(ApiError::bad_request(
                "region: turning the assist on needs the region whose endpoint it uses",
            ));
        };
        if !shared.config.assist.iter().any(|e| &e.region == region) {
            return Err(ApiError::bad_request(format!(
                "region {region:?} has no assist endpoint on this control plane"
            )));
        }
    }
    req.available_regions.clear();
    ctx.note(|n| n.detail = serde_json::json!({"enabled": req.enabled, "region": req.region}));
    let value = serde_json::to_value(&req).map_err(|e| ApiError::internal(e.to_string()))?;
    shared
        .store
        .set_tenant_setting(&shared.tenant_id, SETTING, &value)
        .await?;
    Ok(Json(shared.assist_settings().await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DescribeRequest {
    /// The gateway that reads the catalog (a gateway of the connection's space).
    gateway_id: String,
    /// `schema.table` names to describe; all discovered tables without.
    #[serde(default)]
    tables: Vec<String>,
}

/// Suggested descriptions for one table and its columns.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TableDescriptions {
    schema: String,
    name: String,
    description: Option<String>,
    /// By column name.
    columns: BTreeMap<String, String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DescribeAnswer {
    connection_id: String,
    /// The region whose endpoint answered.
    region: String,
    tables: Vec<TableDescriptions>,
}

/// Suggests descriptions for the tables of a connection, from their names and types only.
/// Refused (409) unless a Data Admin turned the assist on for the tenant.
#[utoipa::path(
    operation_id = "connections_describe",
    post,
    path = "/api/v1/connections/{id}/describe",
    tag = "assist",
    params(("id" = String, Path, description = "The connection's id")),
    request_body = DescribeRequest,
    responses(
        (status = 200, description = "Suggested descriptions", body = DescribeAnswer),
        (status = "4XX", description = "Refused", body = super::ErrorBody)
    ),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("data_asset_create")))
)]
pub(crate) async fn describe(
    ctx: Ctx,
    Path(id): Path<String>,
    Body(req): Body<DescribeRequest>,
) -> Result<Json<DescribeAnswer>, ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    let connection = shared.connection(&id).await?;
    ctx.check(&caller, Action::DataAssetCreate, Some(&connection.space_id))
        .await?;
    let settings = shared.assist_settings().await?;
    let assistant = match (&settings.enabled, &settings.region) {
        (true, Some(region)) => shared
            .assistants
            .iter()
            .find(|a| &a.endpoint().region == region),
        _ => None,
    };
    let Some(assistant) = assistant else {
        return Err(ApiError::conflict(
            "the AI assist is off for this tenant; a Data Admin turns it on with \
             PUT /api/v1/settings/assist",
        ));
    };
    let gateway = shared.gateway(&req.gateway_id).await?;
    if gateway.space_id != connection.space_id {
        return Err(ApiError::bad_request(
            "gateway_id must name a gateway of the connection's data space",
        ));
    }
    ctx.note(|n| {
        n.detail =
            serde_json::json!({"gateway_id": gateway.id, "region": assistant.endpoint().region})
    });
    let spec = shared.spec(connection)?;
    let result = shared
        .sessions
        .command(&gateway.id, Command::DiscoverSchema(spec), DISCOVER_TIMEOUT)
        .await
        .map_err(ApiError::conflict)?;
    let mut tables: Vec<TableDescription> = match result.outcome {
        Ok(CommandOutcome::Schema(tables)) => tables,
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the gateway gave an unexpected answer",
            ));
        }
        Err(report) => return Err(ApiError::conflict(report.message)),
    };
    if !req.tables.is_empty() {
        tables.retain(|t| req.tables.contains(&format!("{}.{}", t.schema, t.name)));
        if tables.len() != req.tables.len() {
            return Err(ApiError::bad_request(
                "tables: some of the tables named were not discovered on the connection",
            ));
        }
    }
    let schema = SchemaMetadata::from_descriptions(&tables, &BTreeMap::new());
    let suggestions = assistant.suggest(&schema).await.map_err(|e| match e {
        tidegate_assist::Error::Invalid(_) => ApiError::bad_request(e.to_string()),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "assist_failed", e.to_string()),
    })?;
    Ok(Json(DescribeAnswer {
        connection_id: id,
        region: assistant.endpoint().region.clone(),
        tables: suggestions
            .tables
            .into_iter()
            .map(|((schema, name), t)| TableDescriptions {
                schema,
                name,
                description: t.description,
                columns: t.columns,
            })
            .collect(),
    }))
}
