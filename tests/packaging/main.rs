//! The Helm chart and the kustomize base ship copies of the CRDs (Helm installs only files under
//! the chart, kustomize loads only files under its root); each must be exactly what
//! `certrotor crd` prints. Refresh them with `scripts/check-packaging.sh --update`.

use certrotor::api;

fn assert_copy_is_current(relative: &str) {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    let copy = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        copy == api::crds_yaml(),
        "{relative} is stale: run `cargo run -- crd > crds/certrotor.yaml && scripts/check-packaging.sh --update`"
    );
}

#[test]
fn chart_crds_match_the_types() {
    assert_copy_is_current("charts/certrotor/crds/certrotor.yaml");
}

#[test]
fn kustomize_crds_match_the_types() {
    assert_copy_is_current("deploy/base/crds.yaml");
}
