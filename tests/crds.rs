//! `crds/` must hold exactly what `certrotor crd` prints, and the CRDs must carry what users and
//! tools rely on.

use certrotor::api;

#[test]
fn committed_crds_match_the_types() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/certrotor.yaml"))
            .unwrap();
    assert!(
        committed == api::crds_yaml(),
        "crds/certrotor.yaml is stale: run `cargo run -- crd > crds/certrotor.yaml`"
    );
}

#[test]
fn binary_prints_the_same() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certrotor"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), api::crds_yaml());
}

#[test]
fn crds_have_status_columns_short_names_and_list_map_conditions() {
    for crd in api::crds() {
        let v = serde_json::to_value(&crd).unwrap();
        let version = &v["spec"]["versions"][0];
        assert!(
            version["subresources"]["status"].is_object(),
            "{}: status subresource",
            crd.spec.names.kind
        );
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Expires") && columns.contains(&"Age"),
            "{columns:?}"
        );
        let expires = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "Expires")
            .unwrap();
        assert_eq!(
            expires["type"], "string",
            "Expires as a string: kubectl renders future dates badly"
        );
        assert_eq!(crd.spec.names.short_names.as_ref().unwrap().len(), 1);
        let conditions = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
            ["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert!(!v.to_string().contains("uint"), "no unsigned formats");
    }
    let tcert = serde_json::to_value(&api::crds()[0]).unwrap().to_string();
    for rule in [
        "has(self.csr)",
        "!n.contains('*')",
        "^[A-Z]{2}$",
        "(ns|us|µs|ms|s|m|h)",
    ] {
        assert!(tcert.contains(rule), "TenantCertificate CEL rule {rule}");
    }
    let tcert_columns = serde_json::to_value(&api::crds()[0]).unwrap()["spec"]["versions"][0]["additionalPrinterColumns"].to_string();
    assert!(tcert_columns.contains("Active") && tcert_columns.contains("Live"));
}
