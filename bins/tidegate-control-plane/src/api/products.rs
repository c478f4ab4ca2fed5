//! Data products: named, described bundles of data tasks' outputs, offered to the tenant's
//! consumers. A Data Product Manager creates them, and only from tasks whose data it may
//! consume itself, so a product never widens access to a space's data.

use axum::Json;
use axum::http::StatusCode;
use serde::Deserialize;
use tidegate_metadata::{DataProduct, MetadataStore, NewDataProduct, Page};
use tidegate_rbac::Action;

use super::{ApiError, Body, Ctx, ListQuery, Query, page_of};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProduct {
    name: String,
    #[serde(default)]
    description: String,
    /// The data tasks whose outputs it bundles (1 to 100), of any data space where the caller
    /// may consume data.
    task_ids: Vec<String>,
}

/// Creates a data product. Needs `data_product_create`, and `data_consume` in the data space
/// of every task bundled.
#[utoipa::path(
    operation_id = "products_create",
    post,
    path = "/api/v1/data-products",
    tag = "data products",
    request_body = CreateProduct,
    responses(
        (status = 201, description = "The data product created", body = DataProduct),
        (status = "4XX", description = "Refused", body = super::ErrorBody)
    ),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("data_product_create")))
)]
pub(crate) async fn create(
    ctx: Ctx,
    Body(req): Body<CreateProduct>,
) -> Result<(StatusCode, Json<DataProduct>), ApiError> {
    let shared = &ctx.shared;
    let caller = ctx.caller().await?;
    ctx.check(&caller, Action::DataProductCreate, None).await?;
    for task_id in &req.task_ids {
        let task = shared.task(task_id).await?;
        ctx.check(&caller, Action::DataConsume, Some(&task.space_id))
            .await?;
    }
    let product = shared
        .store
        .create_data_product(&NewDataProduct {
            tenant_id: shared.tenant_id.clone(),
            name: req.name,
            description: req.description,
            task_ids: req.task_ids,
            created_by: caller.actor(),
        })
        .await?;
    ctx.note(|n| n.target_id = Some(product.id.clone()));
    Ok((StatusCode::CREATED, Json(product)))
}

/// The tenant's data products: their names, descriptions and tasks, for anyone signed in
/// (reading the data itself takes `data_consume` in the tasks' spaces).
#[utoipa::path(
    operation_id = "products_list",
    get,
    path = "/api/v1/data-products",
    tag = "data products",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of data products", body = Page<DataProduct>),
        (status = "4XX", description = "Refused", body = super::ErrorBody)
    ),
    security(("bearer" = [])),
    extensions(("x-tidegate-action" = json!("none")))
)]
pub(crate) async fn list(
    ctx: Ctx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page<DataProduct>>, ApiError> {
    ctx.caller().await?;
    if q.space_id.is_some() {
        return Err(ApiError::bad_request(
            "space_id does not filter data products",
        ));
    }
    let shared = &ctx.shared;
    let page = shared
        .store
        .data_products(&shared.tenant_id, &q.page())
        .await?;
    Ok(page_of(page, |p| p))
}
