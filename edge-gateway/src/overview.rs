//! `GET /v1/me/overview`: the profile, wallet balances and recent orders of the caller,
//! fetched in parallel under one deadline. The profile is required; a failing wallet or
//! order part is reported in `unavailable` instead of failing the whole answer.

use std::time::Duration;

use ordermesh_contracts::order::ListOrdersRequest;
use ordermesh_contracts::order::order_service_client::OrderServiceClient;
use ordermesh_contracts::payment::GetWalletRequest;
use ordermesh_contracts::payment::payment_service_client::PaymentServiceClient;
use ordermesh_contracts::user::GetUserRequest;
use ordermesh_contracts::user::user_service_client::UserServiceClient;
use prost::Message;
use serde_json::{Value, json};
use tonic::metadata::MetadataMap;

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use ordermesh_contracts::options::Audience;

use crate::backends::Backends;
use crate::caller::Caller;
use crate::problem::Problem;
use crate::request_id::RequestId;
use crate::server::Gateway;

const RECENT_ORDERS: i32 = 5;

pub const PATH: &str = "/v1/me/overview";
/// Who may call it: any signed-in user, for themselves.
pub const AUDIENCE: Audience = Audience::User;

/// The route's handler.
pub async fn handle(
    State(gw): State<Arc<Gateway>>,
    request_id: RequestId,
    caller: Caller,
) -> Response {
    let answer = async {
        let metadata = caller.metadata(&request_id)?;
        overview(&gw.backends, &metadata).await
    };
    match answer.await {
        Ok(body) => axum::Json(body).into_response(),
        Err(p) => p.into_response_with(request_id.as_str()),
    }
}

/// The OpenAPI operation of this endpoint: the shapes it composes are the contracts' own.
pub fn operation(refs: &mut Vec<prost_reflect::MessageDescriptor>) -> Value {
    let mut schema_of = |method_path: &str| {
        ordermesh_contracts::descriptors::method_by_path(method_path).map(|rpc| {
            let output = rpc.descriptor.output();
            refs.push(output.clone());
            json!({"$ref": format!("#/components/schemas/{}", output.full_name())})
        })
    };
    let user = schema_of("/ordermesh.user.v1.UserService/GetUser");
    let wallet = schema_of("/ordermesh.payment.v1.PaymentService/GetWallet");
    let orders = schema_of("/ordermesh.order.v1.OrderService/ListOrders")
        .map(|_| json!({"type": "array", "items": {"$ref": "#/components/schemas/ordermesh.order.v1.Order"}}));
    if let Some(order) = ordermesh_contracts::descriptors::method_by_path(
        "/ordermesh.order.v1.OrderService/GetOrder",
    ) {
        refs.push(order.descriptor.output());
    }
    json!({
        "operationId": "GetOverview",
        "tags": ["Overview"],
        "summary": "The caller's profile, balances and recent orders in one answer",
        "description": "Composed by the gateway from GetUser, GetWallet and ListOrders, called in parallel. The profile is required; a wallet or order part that fails is null and listed in `unavailable`.",
        "security": [{"bearer": []}],
        "parameters": [],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": false,
                "required": ["profile", "wallet", "recentOrders", "unavailable"],
                "properties": {
                    "profile": user,
                    "wallet": {"anyOf": [wallet, {"type": "null"}]},
                    "recentOrders": {"anyOf": [orders, {"type": "null"}]},
                    "unavailable": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"part": {"type": "string"}, "status": {"type": "integer"}}
                    }}
                }
            }}}},
            "default": {"description": "An error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        }
    })
}

fn request<T>(msg: T, metadata: &MetadataMap, deadline: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    *req.metadata_mut() = metadata.clone();
    req.set_timeout(deadline);
    req
}

fn as_json<M: Message>(method_path: &str, msg: &M) -> Option<Value> {
    let rpc = ordermesh_contracts::descriptors::method_by_path(method_path)?;
    crate::transcode::response(&rpc.descriptor.output(), &msg.encode_to_vec(), "").ok()
}

pub async fn overview(backends: &Backends, metadata: &MetadataMap) -> Result<Value, Problem> {
    let deadline = backends.deadline;
    let channel = |pkg: &str| backends.get(pkg).map(|b| b.channel.clone());
    let (Some(user_ch), Some(pay_ch), Some(order_ch)) = (
        channel("ordermesh.user.v1"),
        channel("ordermesh.payment.v1"),
        channel("ordermesh.order.v1"),
    ) else {
        return Err(Problem::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a backend is not configured",
        ));
    };
    let profile = async {
        UserServiceClient::new(user_ch)
            .get_user(request(
                GetUserRequest {
                    name: "users/me".into(),
                },
                metadata,
                deadline,
            ))
            .await
    };
    let wallet = async {
        PaymentServiceClient::new(pay_ch)
            .get_wallet(request(GetWalletRequest::default(), metadata, deadline))
            .await
    };
    let orders = async {
        OrderServiceClient::new(order_ch)
            .list_orders(request(
                ListOrdersRequest {
                    page_size: RECENT_ORDERS,
                    ..Default::default()
                },
                metadata,
                deadline,
            ))
            .await
    };
    let (profile, wallet, orders) = tokio::join!(profile, wallet, orders);
    let profile = profile.map_err(|s| Problem::from_status(&s))?.into_inner();
    let mut unavailable = Vec::new();
    let wallet = match wallet {
        Ok(w) => as_json(
            "/ordermesh.payment.v1.PaymentService/GetWallet",
            &w.into_inner(),
        ),
        Err(s) => {
            unavailable.push(
                json!({"part": "wallet", "status": Problem::from_status(&s).status.as_u16()}),
            );
            None
        }
    };
    let orders = match orders {
        Ok(o) => as_json(
            "/ordermesh.order.v1.OrderService/ListOrders",
            &o.into_inner(),
        )
        .map(|v| v["orders"].clone()),
        Err(s) => {
            unavailable.push(
                json!({"part": "recentOrders", "status": Problem::from_status(&s).status.as_u16()}),
            );
            None
        }
    };
    Ok(json!({
        "profile": as_json("/ordermesh.user.v1.UserService/GetUser", &profile),
        "wallet": wallet,
        "recentOrders": orders,
        "unavailable": unavailable,
    }))
}
