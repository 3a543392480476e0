//! The gRPC face of order-service: input validation, object-level rules (a user sees only
//! their own orders; another's reads as NOT_FOUND), and error mapping. The saga does the work.

use ordermesh_contracts::order::catalog_service_server::{CatalogService, CatalogServiceServer};
use ordermesh_contracts::order::order_service_server::{OrderService, OrderServiceServer};
use ordermesh_contracts::order::{
    CancelOrderRequest, CreateOrderRequest, CreateProductRequest, DeliverOrderRequest,
    GetOrderRequest, GetProductRequest, ListOrdersRequest, ListOrdersResponse, ListProductsRequest,
    ListProductsResponse, Order, Product, ShipOrderRequest, UpdateProductRequest,
};
use ordermesh_platform::authz::CallerIdentity;
use ordermesh_platform::money;
use ordermesh_platform::status::{Violations, invalid};
use ordermesh_platform::store::Cursor;
use ordermesh_platform::user_context::UserContext;
use tonic::{Request, Response, Status};

use crate::catalog::{self, Catalog};
use crate::orders::OrderError;
use crate::saga::{Line, OrderSaga};

const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 200;

/// The page size asked for (the contract declares it non-negative), defaulted and capped.
fn page_size(n: i32) -> usize {
    match n {
        n if n <= 0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    }
}

fn page_token(v: &mut Violations, token: &str) -> Option<Cursor> {
    Cursor::from_page_token(token).unwrap_or_else(|_| {
        v.add("page_token", "is not a token this service issued");
        None
    })
}

fn actor_of<T>(req: &Request<T>) -> String {
    match UserContext::from_request(req).ok().flatten() {
        Some(u) => format!("users/{}", u.user_id),
        None => CallerIdentity::of(req)
            .map(|w| format!("workloads/{}", w.service_account))
            .unwrap_or_else(|| "unknown".into()),
    }
}

pub struct CatalogServer {
    catalog: Catalog,
}

impl CatalogServer {
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
    pub fn into_service(self) -> CatalogServiceServer<Self> {
        CatalogServiceServer::new(self)
    }
}

fn sku_of_name(name: &str) -> Result<&str, Status> {
    name.strip_prefix("products/")
        .filter(|s| catalog::valid_sku(s))
        .ok_or_else(|| invalid("name", "must be products/{sku}"))
}

#[tonic::async_trait]
impl CatalogService for CatalogServer {
    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let size = page_size(req.page_size);
        let cursor = page_token(&mut v, &req.page_token);
        v.into_result()?;
        let (products, next) = self.catalog.list(size, cursor).await?;
        Ok(Response::new(ListProductsResponse {
            products,
            next_page_token: next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let sku = sku_of_name(&request.get_ref().name)?;
        let (p, _) = self
            .catalog
            .get(sku)
            .await?
            .ok_or_else(|| Status::not_found(format!("product {sku} not found")))?;
        Ok(Response::new(p))
    }

    async fn create_product(
        &self,
        request: Request<CreateProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let p = request
            .into_inner()
            .product
            .ok_or_else(|| invalid("product", "is required"))?;
        let mut v = Violations::new();
        catalog::check_product(&mut v, &p, true);
        v.into_result()?;
        Ok(Response::new(self.catalog.create(p).await?))
    }

    async fn update_product(
        &self,
        request: Request<UpdateProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let req = request.into_inner();
        let patch = req
            .product
            .ok_or_else(|| invalid("product", "is required"))?;
        let sku = sku_of_name(&patch.name)?.to_string();
        let mut v = Violations::new();
        let paths = product_update_paths(req.update_mask.as_ref(), &patch, &mut v);
        for path in &paths {
            match *path {
                "display_name" => {
                    let n = patch.display_name.trim();
                    v.check(
                        !n.is_empty() && n.chars().count() <= 120,
                        "product.display_name",
                        "must be 1-120 characters",
                    );
                }
                "unit_price" => {
                    money::check_positive(&mut v, "product.unit_price", patch.unit_price.as_ref());
                }
                _ => v.check(
                    (0..=catalog::MAX_STOCK).contains(&patch.stock),
                    "product.stock",
                    format!("must be 0..={}", catalog::MAX_STOCK),
                ),
            }
        }
        v.into_result()?;
        let updated = self
            .catalog
            .update(&sku, |p| {
                for path in &paths {
                    match *path {
                        "display_name" => p.display_name = patch.display_name.trim().to_string(),
                        "unit_price" => p.unit_price = patch.unit_price.clone(),
                        _ => p.stock = patch.stock,
                    }
                }
            })
            .await?;
        Ok(Response::new(updated))
    }
}

/// The product fields an update changes: those its mask names (JSON or proto names), or,
/// with no mask, those it sets (AIP-134), so an update never clears what it did not mention.
/// A path inside the price (`unit_price.currency`) names the price: a price is replaced
/// whole, never half-changed.
fn product_update_paths(
    mask: Option<&prost_types::FieldMask>,
    patch: &Product,
    v: &mut Violations,
) -> Vec<&'static str> {
    let mut paths = Vec::new();
    match mask {
        Some(m) if !m.paths.is_empty() => {
            for path in &m.paths {
                let head = path.split('.').next().unwrap_or_default();
                let known = match head {
                    "display_name" | "displayName" if head == path => "display_name",
                    "unit_price" | "unitPrice" => "unit_price",
                    "stock" if head == path => "stock",
                    _ => {
                        v.add(
                            "update_mask",
                            format!("{path} cannot be updated (updatable: display_name, unit_price, stock)"),
                        );
                        continue;
                    }
                };
                if !paths.contains(&known) {
                    paths.push(known);
                }
            }
        }
        _ => {
            if !patch.display_name.is_empty() {
                paths.push("display_name");
            }
            if patch.unit_price.is_some() {
                paths.push("unit_price");
            }
            if patch.stock != 0 {
                paths.push("stock");
            }
            if paths.is_empty() {
                v.add(
                    "update_mask",
                    "nothing to update: set a field or name it in the mask",
                );
            }
        }
    }
    paths
}

pub struct OrderServer {
    saga: OrderSaga,
}

impl OrderServer {
    pub fn new(saga: OrderSaga) -> Self {
        Self { saga }
    }
    pub fn into_service(self) -> OrderServiceServer<Self> {
        OrderServiceServer::new(self)
    }

    /// The order named, if the caller may see it (owner, admin, or an operator workload).
    async fn visible<T>(&self, req: &Request<T>, name: &str) -> Result<(String, Order), Status> {
        let id = name
            .strip_prefix("orders/")
            .filter(|id| !id.is_empty() && id.len() <= 64 && !id.contains(['/', '#']))
            .ok_or_else(|| invalid("name", "must be orders/{id}"))?;
        let user = UserContext::from_request(req)?;
        let order = self
            .saga
            .orders
            .get(id)
            .await?
            .and_then(|(r, _)| r.order)
            .filter(|o| {
                user.as_ref()
                    .is_none_or(|u| u.is_admin() || u.user_id == o.user_id)
            })
            .ok_or_else(|| Status::from(OrderError::NotFound))?;
        Ok((id.to_string(), order))
    }
}

#[tonic::async_trait]
impl OrderService for OrderServer {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let user = UserContext::require(&request)?;
        let req = request.into_inner();
        // Item count, SKU form, quantities and the idempotency key are the contract's
        // declared constraints, checked before this runs; what a declaration cannot say is here.
        let mut v = Violations::new();
        let mut seen = std::collections::HashSet::new();
        for (i, item) in req.items.iter().enumerate() {
            if !seen.insert(item.sku.as_str()) {
                v.add(&format!("items[{i}].sku"), "appears more than once");
            }
        }
        money::check_currency(&mut v, "currency", &req.currency);
        // Prices come from the catalog; unknown products and price currency are checked here.
        if v.is_empty() {
            for (i, item) in req.items.iter().enumerate() {
                match self.saga.catalog.get(&item.sku).await? {
                    None => v.add(
                        &format!("items[{i}].sku"),
                        format!("no product {}", item.sku),
                    ),
                    Some((p, _))
                        if p.unit_price
                            .as_ref()
                            .is_none_or(|m| m.currency != req.currency) =>
                    {
                        v.add(
                            &format!("items[{i}].sku"),
                            format!("{} is not sold in {}", item.sku, req.currency),
                        )
                    }
                    Some(_) => {}
                }
            }
        }
        v.into_result()?;
        let lines: Vec<Line> = req
            .items
            .iter()
            .map(|i| Line {
                sku: i.sku.clone(),
                quantity: i.quantity,
            })
            .collect();
        let order = self
            .saga
            .place(&user.user_id, &lines, &req.currency, &req.idempotency_key)
            .await?;
        Ok(Response::new(order))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let (_, order) = self.visible(&request, &request.get_ref().name).await?;
        Ok(Response::new(order))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let user = UserContext::from_request(&request)?;
        let req = request.into_inner();
        let owner = match (&user, req.user_id.as_str()) {
            (Some(u), "") => u.user_id.clone(),
            (Some(u), other) if other == u.user_id || u.is_admin() => other.to_string(),
            (Some(_), _) => {
                return Err(Status::permission_denied(
                    "only admins list other users' orders",
                ));
            }
            (None, "") => return Err(invalid("user_id", "is required without a signed-in user")),
            (None, other) => other.to_string(),
        };
        let mut v = Violations::new();
        let size = page_size(req.page_size);
        let cursor = page_token(&mut v, &req.page_token);
        if cursor
            .as_ref()
            .is_some_and(|c| c.ipk.as_deref() != Some(&format!("user#{owner}")))
        {
            v.add("page_token", "belongs to another listing");
        }
        v.into_result()?;
        let (orders, next) = self.saga.orders.list_for_user(&owner, size, cursor).await?;
        Ok(Response::new(ListOrdersResponse {
            orders,
            next_page_token: next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let (id, _) = self.visible(&request, &request.get_ref().name).await?;
        let reason = request.get_ref().reason.trim();
        if reason.chars().count() > 200 {
            return Err(invalid("reason", "is longer than 200 characters"));
        }
        let actor = actor_of(&request);
        Ok(Response::new(self.saga.cancel(&id, reason, &actor).await?))
    }

    async fn ship_order(
        &self,
        request: Request<ShipOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let (id, _) = self.visible(&request, &request.get_ref().name).await?;
        Ok(Response::new(
            self.saga.ship(&id, &actor_of(&request)).await?,
        ))
    }

    async fn deliver_order(
        &self,
        request: Request<DeliverOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let (id, _) = self.visible(&request, &request.get_ref().name).await?;
        Ok(Response::new(
            self.saga.deliver(&id, &actor_of(&request)).await?,
        ))
    }
}
