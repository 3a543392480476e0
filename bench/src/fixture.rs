//! What the measured calls need, made through the gateway's public API: shoppers with money,
//! products with stock, and one placed order to read back.

use std::net::SocketAddr;

use anyhow::Context;
use futures::future::try_join_all;
use ordermesh_tests::http::{Api, HttpResponse};
use serde_json::json;

use crate::processes::{ADMIN_EMAIL, ADMIN_PASSWORD};

pub const PASSWORD: &str = "bench password, long enough";
pub const CURRENCY: &str = "EUR";

pub struct Fixture {
    /// One access token per shopper.
    pub tokens: Vec<String>,
    pub skus: Vec<String>,
    /// An order of the first shopper, read by the read-path benchmarks.
    pub order_name: String,
    pub order_user_id: String,
}

fn ok(res: HttpResponse, what: &str) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        (200..300).contains(&res.status),
        "{what}: {} {}",
        res.status,
        res.text()
    );
    serde_json::from_slice(&res.body).with_context(|| format!("{what}: not JSON"))
}

async fn login(anon: &Api, email: &str, password: &str) -> anyhow::Result<String> {
    let res = anon
        .post(
            "/v1/auth/login",
            json!({"email": email, "password": password}),
        )
        .await;
    let body = ok(res, "login")?;
    body["accessToken"]
        .as_str()
        .map(String::from)
        .context("login: no accessToken")
}

async fn shopper(anon: &Api, i: usize) -> anyhow::Result<String> {
    let email = format!("shopper-{i}@example.com");
    ok(
        anon.post(
            "/v1/users",
            json!({"email": email, "password": PASSWORD, "displayName": format!("Shopper {i}")}),
        )
        .await,
        "register",
    )?;
    let token = login(anon, &email, PASSWORD).await?;
    let me = anon.with_token(&token);
    ok(
        me.post(
            "/v1/wallet/deposits",
            json!({"amount": {"currency": CURRENCY, "amountMinor": "1000000000"}, "idempotencyKey": "bench-funds"}),
        )
        .await,
        "deposit",
    )?;
    Ok(token)
}

pub async fn prepare(
    gateway: SocketAddr,
    shoppers: usize,
    products: usize,
) -> anyhow::Result<Fixture> {
    let anon = Api {
        addr: gateway,
        token: None,
    };
    let admin = anon.with_token(&login(&anon, ADMIN_EMAIL, ADMIN_PASSWORD).await?);
    let skus: Vec<String> = (0..products).map(|i| format!("BENCH-{i:03}")).collect();
    for sku in &skus {
        ok(
            admin
                .post(
                    "/v1/products",
                    json!({"sku": sku, "displayName": sku, "unitPrice": {"currency": CURRENCY, "amountMinor": "100"}, "stock": "1000000000"}),
                )
                .await,
            "create product",
        )?;
    }
    let tokens = try_join_all((0..shoppers).map(|i| shopper(&anon, i))).await?;
    let first = anon.with_token(&tokens[0]);
    let order = ok(
        first
            .post(
                "/v1/orders",
                json!({"items": [{"sku": skus[0], "quantity": 1}], "currency": CURRENCY, "idempotencyKey": "bench-read"}),
            )
            .await,
        "place the order to read",
    )?;
    anyhow::ensure!(
        order["state"] == "ORDER_STATE_CONFIRMED",
        "the order to read is {}",
        order["state"]
    );
    Ok(Fixture {
        tokens,
        skus,
        order_name: order["name"].as_str().context("order name")?.to_string(),
        order_user_id: order["userId"]
            .as_str()
            .context("order userId")?
            .to_string(),
    })
}
