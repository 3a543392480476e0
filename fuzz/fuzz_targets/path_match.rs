//! Request paths against every route template: arbitrary (even non-UTF-8, percent-encoded)
//! paths resolve to a route, a 405, a 404 or an encoded-slash refusal, never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ordermesh_edge_gateway::routes::{self, Resolved, Route};

static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| routes::all().unwrap_or_default());

const METHODS: [http::Method; 5] = [
    http::Method::GET,
    http::Method::POST,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::PUT,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let path = String::from_utf8_lossy(rest);
    let method = &METHODS[pick as usize % METHODS.len()];
    if let Resolved::Found(route, bindings) = routes::resolve(&ROUTES, method, &path) {
        assert_eq!(&route.method, method);
        // Whatever a path binds must come back out of the transcoder cleanly.
        let _ = ordermesh_edge_gateway::transcode::request(route, &bindings, None, b"{}");
    }
});
