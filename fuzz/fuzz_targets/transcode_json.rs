//! JSON bodies (and query strings) into protobuf messages: every route with a body, fed
//! arbitrary bytes. Must return a message or a TranscodeError, never panic or hang.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use ordermesh_edge_gateway::routes::{self, Route};
use ordermesh_edge_gateway::transcode;

static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| routes::all().unwrap_or_default());

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let routes = &*ROUTES;
    if routes.is_empty() {
        return;
    }
    let route = &routes[pick as usize % routes.len()];
    // An optional query string before the first NUL, the body after it.
    let (query, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (std::str::from_utf8(&rest[..i]).ok(), &rest[i + 1..]),
        None => (None, rest),
    };
    let bindings = vec![("name".to_string(), "orders/x".to_string())];
    let _ = transcode::request(route, &bindings, query, body);
});
