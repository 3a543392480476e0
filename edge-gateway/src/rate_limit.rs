//! The rate-limit layers. Every request draws on its sender's address first, whatever it
//! then turns out to be (a bad token, a refused admin call, an unknown route), so none of
//! them is free; a signed-in caller then draws on their own bucket too. The response reports
//! the tighter of the budgets (`RateLimit-*` headers); a refusal is a 429 with `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, Request, StatusCode, header};

use crate::caller::Caller;
use crate::endpoint::Endpoint;
use crate::gateway_metrics::BucketLabels;
use crate::limits::{Bucket, Budget, RouteClass};
use crate::problem::Problem;
use crate::request_id::RequestId;
use crate::server::Gateway;

const LIMIT: header::HeaderName = header::HeaderName::from_static("ratelimit-limit");
const REMAINING: header::HeaderName = header::HeaderName::from_static("ratelimit-remaining");
const RESET: header::HeaderName = header::HeaderName::from_static("ratelimit-reset");

pub async fn by_address(
    State(gw): State<Arc<Gateway>>,
    request_id: RequestId,
    req: Request<Body>,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let client = gw.config.trusted_proxies.client_ip(peer, req.headers());
    let bucket = match req.extensions().get::<Endpoint>().map(|e| e.class) {
        Some(RouteClass::Account) => Bucket::Account,
        _ => Bucket::Address,
    };
    let budget = match gw.draw(bucket, &format!("ip:{client}")) {
        Ok(b) => b,
        Err(p) => return p.into_response_with(request_id.as_str()),
    };
    let mut res = next.run(req).await;
    // The user's own budget, when it was drawn on, is reported if it is the tighter.
    let tighter_inside = res
        .headers()
        .get(REMAINING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|inner| inner <= budget.remaining);
    if !tighter_inside {
        report(&mut res, &budget);
    }
    res
}

pub async fn by_user(
    State(gw): State<Arc<Gateway>>,
    request_id: RequestId,
    caller: Caller,
    req: Request<Body>,
    next: Next,
) -> Response {
    let account_route = req
        .extensions()
        .get::<Endpoint>()
        .is_some_and(|e| e.class == RouteClass::Account);
    let user = caller.user().filter(|_| !account_route);
    let Some(user) = user else {
        return next.run(req).await;
    };
    // A key has a budget of its own: an integration does not eat its owner's.
    let drawn = match caller.api_key() {
        Some(key) => gw.draw(Bucket::ApiKey, &format!("key:{key}")),
        None => gw.draw(Bucket::User, &format!("user:{}", user.sub)),
    };
    let budget = match drawn {
        Ok(b) => b,
        Err(p) => return p.into_response_with(request_id.as_str()),
    };
    let mut res = next.run(req).await;
    report(&mut res, &budget);
    res
}

impl Gateway {
    /// One request from `key`'s bucket, or the 429 that refuses it.
    fn draw(&self, bucket: Bucket, key: &str) -> Result<Budget, Problem> {
        self.limits.check(bucket, key).map_err(|b| {
            self.backends
                .metrics
                .rate_limited
                .get_or_create(&BucketLabels {
                    bucket: bucket.name().to_string(),
                })
                .inc();
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!("too many requests; retry in {} s", b.reset),
            )
            .with_header(header::RETRY_AFTER, &b.reset.to_string());
            for (n, v) in values(&b) {
                p = p.with_header(n, &v);
            }
            p
        })
    }
}

fn values(b: &Budget) -> [(header::HeaderName, String); 3] {
    [
        (LIMIT, b.limit.to_string()),
        (REMAINING, b.remaining.to_string()),
        (RESET, b.reset.to_string()),
    ]
}

fn report(res: &mut Response, b: &Budget) {
    for (n, v) in values(b) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            res.headers_mut().insert(n, v);
        }
    }
}
