//! `x-forwarded-client-cert` headers: any bytes parse to elements or a refusal, never a panic;
//! and a header that parses keeps its meaning when printed back with every value quoted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordermesh_platform::xfcc;

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ordermesh_platform::identity::WorkloadId::from_forwarded_client_cert(header);
    if let Ok(elements) = xfcc::parse(header) {
        let printed = elements
            .iter()
            .map(|e| {
                e.pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", quote(v)))
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .collect::<Vec<_>>()
            .join(",");
        // Keys with separators in them cannot be printed back; everything else round-trips.
        if elements
            .iter()
            .flat_map(|e| &e.pairs)
            .all(|(k, _)| !k.contains(['"', ',', ';', '=']) && k.trim() == k)
        {
            assert_eq!(xfcc::parse(&printed).as_ref(), Ok(&elements), "{printed}");
        }
    }
});
