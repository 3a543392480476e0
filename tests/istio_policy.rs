//! The checked-in Istio AuthorizationPolicies equal what the proto descriptors say.

use ordermesh_platform::istio_policy;

#[test]
fn checked_in_authorization_policies_match_the_descriptors() {
    let path = ordermesh_tests::repo_root().join("istio/authorization-policies.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let fresh = istio_policy::render("cluster.local", "ordermesh");
    assert!(
        checked_in == fresh,
        "{} is stale: regenerate it with\n  cargo run -p ordermesh -- istio policies > istio/authorization-policies.yaml",
        path.display()
    );
}
