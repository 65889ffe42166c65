//! The CRDs' CEL validation rules, as a real API server treats them: every input bounded (or the
//! server refuses the CRD for its cost), and every rule enforced on the objects users apply. The
//! stand-in applies both, so these run through it with kube's own client.

use std::collections::BTreeSet;

use certrotor::sim::kube::StandIn;
use certrotor::sim::kube::cel::{self, RULE_COST_LIMIT, TOTAL_COST_LIMIT};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

fn generated() -> Vec<Value> {
    certrotor::api::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect()
}

fn schema_of(crd: &Value) -> &Value {
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .expect("a schema")
}

fn crd_named<'a>(crds: &'a [Value], kind: &str) -> &'a Value {
    crds.iter()
        .find(|c| c.pointer("/spec/names/kind").and_then(Value::as_str) == Some(kind))
        .unwrap()
}

#[test]
fn every_rule_input_is_bounded_and_the_cost_is_far_under_budget() {
    let mut unbounded = Vec::new();
    for crd in generated() {
        let name = crd["metadata"]["name"].as_str().unwrap().to_string();
        let sites = cel::rule_sites(schema_of(&crd));
        assert!(!sites.is_empty(), "{name} has rules");
        let mut total = 0u64;
        for site in &sites {
            for field in &site.unbounded {
                unbounded.push(format!(
                    "{name}: rule {:?} at {} reads {field}",
                    site.rule, site.data_path
                ));
            }
            assert!(
                site.cost < RULE_COST_LIMIT / 100,
                "{name}: {} costs {}, more than 1% of the per-rule budget",
                site.rule,
                site.cost
            );
            total += site.cost;
        }
        assert!(
            total < TOTAL_COST_LIMIT / 1000,
            "{name}: the rules together cost {total}"
        );
        assert_eq!(cel::crd_rule_errors(&crd), Vec::<String>::new(), "{name}");
    }
    assert!(
        unbounded.is_empty(),
        "unbounded rule inputs:\n{}",
        unbounded.join("\n")
    );
}

#[test]
fn the_committed_copies_are_accepted() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "crds/certrotor.yaml",
        "charts/certrotor/crds/certrotor.yaml",
        "deploy/base/crds.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert_eq!(docs.len(), 2, "{file}");
        for crd in docs {
            assert_eq!(cel::crd_rule_errors(&crd), Vec::<String>::new(), "{file}");
        }
    }
}

/// The boundedness check fails, naming the path, when any bound goes missing.
#[test]
fn removing_any_bound_is_caught_by_name() {
    let crds = generated();
    let tc = crd_named(&crds, "TenantCertificate");
    let spec = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
    for (pointer, key, named) in [
        (
            "/csr/properties/subjectAlternativeNames",
            "maxItems",
            "spec.csr.subjectAlternativeNames (array without maxItems)",
        ),
        (
            "/csr/properties/subjectAlternativeNames/items",
            "maxLength",
            "spec.csr.subjectAlternativeNames[*] (string without maxLength)",
        ),
        (
            "/tenant/properties/url",
            "maxLength",
            "spec.tenant.url (string without maxLength)",
        ),
        (
            "/csr/properties/country",
            "maxLength",
            "spec.csr.country (string without maxLength)",
        ),
        (
            "/renewBefore",
            "maxLength",
            "spec.renewBefore (string without maxLength)",
        ),
        (
            "/tenant/properties/caBundle",
            "maxLength",
            "spec.tenant.caBundle (string without maxLength)",
        ),
    ] {
        let mut crd = tc.clone();
        let node = crd.pointer_mut(&format!("{spec}{pointer}")).unwrap();
        assert!(
            node.as_object_mut().unwrap().remove(key).is_some(),
            "{pointer}"
        );
        let found: Vec<String> = cel::rule_sites(schema_of(&crd))
            .into_iter()
            .flat_map(|s| s.unbounded)
            .collect();
        assert!(found.iter().any(|f| f == named), "{named}: {found:?}");
        assert!(!cel::crd_rule_errors(&crd).is_empty(), "{pointer}");
    }
}

async fn standin() -> StandIn {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    StandIn::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn api_message(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other}"),
    }
}

/// The CRD as it was before the bounds: the real server's refusal, reproduced.
#[tokio::test]
async fn the_standin_refuses_an_unbounded_crd_as_the_server_does() {
    let s = standin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    let generated = generated();
    let mut tc = crd_named(&generated, "TenantCertificate").clone();
    let sans = tc
        .pointer_mut(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/csr/properties/subjectAlternativeNames",
        )
        .unwrap();
    sans.as_object_mut().unwrap().remove("maxItems");
    sans["items"].as_object_mut().unwrap().remove("maxLength");
    let crd: CustomResourceDefinition = serde_json::from_value(tc).unwrap();
    let (code, message) = api_message(
        crds.create(&PostParams::default(), &crd)
            .await
            .expect_err("an unbounded CRD is refused"),
    );
    assert_eq!(code, 422);
    let san_rule = "spec.validation.openAPIV3Schema.properties[spec].properties[csr].properties[subjectAlternativeNames].x-kubernetes-validations[0].rule";
    for want in [
        "CustomResourceDefinition.apiextensions.k8s.io \"tenantcertificates.certrotor.io\" is invalid: [".to_string(),
        format!(
            "{san_rule}: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
        ),
        format!(
            "{san_rule}: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
        ),
        "spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x".to_string(),
    ] {
        assert!(message.contains(&want), "missing {want}\nin {message}");
    }
    assert!(
        crds.get_opt("tenantcertificates.certrotor.io")
            .await
            .unwrap()
            .is_none(),
        "nothing was stored"
    );

    // Half the bounds is still over budget, by a factor the server would give as a number.
    let mut half = crd_named(&generated, "TenantCertificate").clone();
    half.pointer_mut(
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/csr/properties/subjectAlternativeNames/items",
    )
    .unwrap()
    .as_object_mut()
    .unwrap()
    .remove("maxLength");
    let crd: CustomResourceDefinition = serde_json::from_value(half).unwrap();
    let (code, message) = api_message(crds.create(&PostParams::default(), &crd).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(
        message.contains(&format!(
            "{san_rule}: Forbidden: estimated rule cost exceeds budget by factor of 3.1x"
        )),
        "{message}"
    );

    // A rule that does not compile.
    let mut broken = crd_named(&generated, "DeviceIdCredential").clone();
    broken
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/x-kubernetes-validations/0/rule")
        .map(|r| *r = json!("has(self.renewBefore) &&"))
        .unwrap();
    let crd: CustomResourceDefinition = serde_json::from_value(broken).unwrap();
    let (code, message) = api_message(crds.create(&PostParams::default(), &crd).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value: \"has(self.renewBefore) &&\": compilation failed"),
        "{message}"
    );

    for crd in certrotor::api::crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("the generated CRDs are accepted");
    }
}

fn tenant_certificate() -> Value {
    json!({
        "apiVersion": "certrotor.io/v1alpha1",
        "kind": "TenantCertificate",
        "spec": {
            "tenant": {"url": "https://openam-acme.id.forgerock.io",
                       "credentialsSecretRef": {"name": "aic"}},
            "keySource": "Tenant",
            "secretRef": {"name": "tls"},
            "csr": {"commonName": "login.example.com", "country": "US",
                    "jurisdictionCountry": "DE",
                    "subjectAlternativeNames": ["login.example.com", "id.example.com"]},
            "renewBefore": "720h",
            "issuerRef": {"name": "corp-ca", "kind": "Issuer"},
            "duration": "2160h"
        }
    })
}

fn device_id_credential() -> Value {
    json!({
        "apiVersion": "certrotor.io/v1alpha1",
        "kind": "DeviceIdCredential",
        "spec": {
            "endpoint": "https://us.device-identity-broker.services-edge.paloaltonetworks.com",
            "onboardingSecretRef": {"name": "onboarding"},
            "certName": "acme-iot",
            "subject": {"commonName": "acme-iot", "country": "US"},
            "privateKey": {"algorithm": "RSA", "size": 3072},
            "secretName": "acme-iot-client",
            "renewBefore": "240h",
            "refreshToken": true,
            "tokenRefreshInterval": "24h"
        }
    })
}

/// One case: a change to a valid object, and the refusal it must get (None: accepted).
struct Case {
    kind: &'static str,
    /// The rule this case exercises: `data path#index`, as `cel::rule_sites` names it.
    rule: &'static str,
    pointer: &'static str,
    value: Value,
    refusal: Option<&'static str>,
}

fn case(
    kind: &'static str,
    rule: &'static str,
    pointer: &'static str,
    value: Value,
    refusal: Option<&'static str>,
) -> Case {
    Case {
        kind,
        rule,
        pointer,
        value,
        refusal,
    }
}

fn set(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = obj.pointer_mut(parent).unwrap();
    if value.is_null() {
        parent.as_object_mut().unwrap().remove(key);
    } else {
        parent[key] = value;
    }
}

fn dynamic_api(s: &StandIn, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("certrotor.io", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(
        s.client(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

#[tokio::test]
async fn every_rule_accepts_a_valid_object_and_refuses_an_invalid_one_with_its_message() {
    let s = standin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    for crd in certrotor::api::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    const TC: &str = "TenantCertificate";
    const DI: &str = "DeviceIdCredential";
    let cases = vec![
        case(
            TC,
            "spec#0",
            "/spec/csr",
            Value::Null,
            Some(
                "spec: Invalid value: \"object\": keySource Tenant needs csr: the tenant makes the key and CSR from it",
            ),
        ),
        case(
            TC,
            "spec#1",
            "/spec/keySource",
            json!("Local"),
            Some(
                "spec: Invalid value: \"object\": issuerRef needs keySource Tenant: cert-manager signs the tenant's CSR (with keySource Local, cert-manager's Certificate writes the Secret)",
            ),
        ),
        case(TC, "spec#1", "/spec/issuerRef", Value::Null, None),
        case(
            TC,
            "spec.issuerRef.kind#0",
            "/spec/issuerRef/kind",
            json!("Certificate"),
            Some(
                "spec.issuerRef.kind: Invalid value: \"string\": issuerRef.kind must be Issuer or ClusterIssuer",
            ),
        ),
        case(
            TC,
            "spec.issuerRef.kind#0",
            "/spec/issuerRef/kind",
            json!("ClusterIssuer"),
            None,
        ),
        case(
            TC,
            "spec.duration#0",
            "/spec/duration",
            json!("90 days"),
            Some(
                "spec.duration: Invalid value: \"string\": duration must be a duration such as 2160h",
            ),
        ),
        case(TC, "spec.duration#0", "/spec/duration", json!("24h"), None),
        case(
            TC,
            "spec.tenant.url#0",
            "/spec/tenant/url",
            json!("http://tenant.example.com"),
            Some(
                "spec.tenant.url: Invalid value: \"string\": tenant url must be https:// (plain http only for loopback)",
            ),
        ),
        case(
            TC,
            "spec.tenant.url#0",
            "/spec/tenant/url",
            json!("http://127.0.0.1:8080"),
            None,
        ),
        case(
            TC,
            "spec.csr.commonName#0",
            "/spec/csr/commonName",
            json!("*.example.com"),
            Some("spec.csr.commonName: Invalid value: \"string\": wildcards are not allowed"),
        ),
        case(
            TC,
            "spec.csr.commonName#0",
            "/spec/csr/commonName",
            json!("www.example.com"),
            None,
        ),
        case(
            TC,
            "spec.csr.country#0",
            "/spec/csr/country",
            json!("us"),
            Some(
                "spec.csr.country: Invalid value: \"string\": country must be two capital letters, e.g. US",
            ),
        ),
        case(
            TC,
            "spec.csr.country#0",
            "/spec/csr/country",
            json!("GB"),
            None,
        ),
        case(
            TC,
            "spec.csr.jurisdictionCountry#0",
            "/spec/csr/jurisdictionCountry",
            json!("D1"),
            Some(
                "spec.csr.jurisdictionCountry: Invalid value: \"string\": jurisdictionCountry must be two capital letters",
            ),
        ),
        case(
            TC,
            "spec.csr.subjectAlternativeNames#0",
            "/spec/csr/subjectAlternativeNames",
            json!(["login.example.com", "*.example.com"]),
            Some(
                "spec.csr.subjectAlternativeNames: Invalid value: \"array\": wildcard subjectAlternativeNames are rejected by the tenant",
            ),
        ),
        case(
            TC,
            "spec.csr.subjectAlternativeNames#0",
            "/spec/csr/subjectAlternativeNames",
            json!([]),
            None,
        ),
        case(
            TC,
            "spec.renewBefore#0",
            "/spec/renewBefore",
            json!("30 days"),
            Some(
                "spec.renewBefore: Invalid value: \"string\": renewBefore must be a duration such as 720h or 1h30m",
            ),
        ),
        case(
            TC,
            "spec.renewBefore#0",
            "/spec/renewBefore",
            json!("1h30m"),
            None,
        ),
        // The bounds themselves, with the schema's wording.
        case(
            TC,
            "",
            "/spec/csr/subjectAlternativeNames",
            Value::Array(
                (0..101)
                    .map(|i| json!(format!("h{i}.example.com")))
                    .collect(),
            ),
            Some("spec.csr.subjectAlternativeNames: Too many: 101: must have at most 100 items"),
        ),
        case(
            TC,
            "",
            "/spec/csr/subjectAlternativeNames",
            json!(["a".repeat(254)]),
            Some("spec.csr.subjectAlternativeNames[0]: Too long: may not be longer than 253"),
        ),
        case(
            TC,
            "",
            "/spec/csr/country",
            json!("USA"),
            Some(
                "[spec.csr.country: Too long: may not be longer than 2, spec.csr.country: Invalid value: \"string\": country must be two capital letters, e.g. US]",
            ),
        ),
        case(
            DI,
            "spec#0",
            "/spec/renewBeforePercentage",
            json!(30),
            Some(
                "spec: Invalid value: \"object\": set renewBefore or renewBeforePercentage, not both",
            ),
        ),
        case(
            DI,
            "spec#1",
            "/spec/secretName",
            json!("onboarding"),
            Some(
                "spec: Invalid value: \"object\": secretName must not be the onboarding Secret: publishing there would overwrite the onboarding credential",
            ),
        ),
        case(
            DI,
            "",
            "/spec/secretName",
            json!("s".repeat(246)),
            Some("spec.secretName: Too long: may not be longer than 245"),
        ),
        case(
            DI,
            "spec.endpoint#0",
            "/spec/endpoint",
            json!("http://127.0.0.1:8443"),
            Some(
                "spec.endpoint: Invalid value: \"string\": endpoint must be https:// (mutual TLS)",
            ),
        ),
        case(
            DI,
            "spec.privateKey#0",
            "/spec/privateKey",
            json!({"algorithm": "ECDSA", "size": 2048}),
            Some(
                "spec.privateKey: Invalid value: \"object\": ECDSA takes size 256 or 384; RSA takes 2048, 3072 or 4096",
            ),
        ),
        case(
            DI,
            "spec.privateKey#0",
            "/spec/privateKey",
            json!({"algorithm": "RSA", "size": 384}),
            Some(
                "spec.privateKey: Invalid value: \"object\": ECDSA takes size 256 or 384; RSA takes 2048, 3072 or 4096",
            ),
        ),
        case(
            DI,
            "spec.privateKey#0",
            "/spec/privateKey",
            json!({"algorithm": "ECDSA", "size": 384}),
            None,
        ),
        case(
            DI,
            "spec.tokenRefreshInterval#0",
            "/spec/tokenRefreshInterval",
            json!("1 day"),
            Some(
                "spec.tokenRefreshInterval: Invalid value: \"string\": tokenRefreshInterval must be a duration such as 24h",
            ),
        ),
        case(
            DI,
            "spec.tokenRefreshInterval#0",
            "/spec/tokenRefreshInterval",
            json!("12h30m"),
            None,
        ),
        case(
            DI,
            "spec.renewBefore#0",
            "/spec/renewBefore",
            json!("10d"),
            Some(
                "spec.renewBefore: Invalid value: \"string\": renewBefore must be a duration such as 240h",
            ),
        ),
        case(
            DI,
            "spec.subject.country#0",
            "/spec/subject/country",
            json!("U1"),
            Some(
                "spec.subject.country: Invalid value: \"string\": country must be two capital letters",
            ),
        ),
        case(
            DI,
            "spec.subject.country#0",
            "/spec/subject/country",
            json!("CA"),
            None,
        ),
    ];
    let mut covered_refused: BTreeSet<(&str, String)> = BTreeSet::new();
    let mut covered_accepted: BTreeSet<(&str, String)> = BTreeSet::new();
    for (i, c) in cases.iter().enumerate() {
        let mut obj = if c.kind == TC {
            tenant_certificate()
        } else {
            device_id_credential()
        };
        obj["metadata"] = json!({"name": format!("case-{i}")});
        set(&mut obj, c.pointer, c.value.clone());
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        let result = dynamic_api(&s, c.kind)
            .create(&PostParams::default(), &obj)
            .await;
        match (c.refusal, result) {
            (None, Ok(_)) => {
                covered_accepted.insert((c.kind, c.rule.to_string()));
            }
            (Some(want), Err(e)) => {
                let (code, message) = api_message(e);
                assert_eq!(code, 422, "case {i}");
                let plural = format!("{}s", c.kind.to_lowercase());
                assert_eq!(
                    message,
                    format!("{}.certrotor.io \"case-{i}\" is invalid: {want}", c.kind),
                    "case {i} ({plural})"
                );
                covered_refused.insert((c.kind, c.rule.to_string()));
            }
            (None, Err(e)) => panic!("case {i} ({} = {}) was refused: {e}", c.pointer, c.value),
            (Some(want), Ok(_)) => panic!("case {i} was accepted; wanted {want}"),
        }
    }
    // Both valid objects as written pass every rule whose field they hold (a rule on an absent
    // field is not evaluated, so it is not covered by them).
    for (kind, obj) in [(TC, tenant_certificate()), (DI, device_id_credential())] {
        let mut obj = obj;
        obj["metadata"] = json!({"name": "valid"});
        let evaluated: Vec<String> = cel::rule_sites(schema_of(crd_named(&generated(), kind)))
            .iter()
            .filter(|site| !site.rule.contains("oldSelf"))
            .filter(|site| {
                let pointer = format!("/{}", site.data_path.replace('.', "/"));
                obj.pointer(&pointer).is_some_and(|v| !v.is_null())
            })
            .map(|site| format!("{}#{}", site.data_path, site.index))
            .collect();
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        dynamic_api(&s, kind)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
        covered_accepted.extend(evaluated.into_iter().map(|key| (kind, key)));
    }
    // Every rule of both CRDs has a refused case (transition rules below).
    for crd in generated() {
        let kind = crd
            .pointer("/spec/names/kind")
            .and_then(Value::as_str)
            .unwrap();
        let kind = if kind == TC { TC } else { DI };
        for site in cel::rule_sites(schema_of(&crd)) {
            let key = format!("{}#{}", site.data_path, site.index);
            if site.rule.contains("oldSelf") {
                continue;
            }
            assert!(
                covered_refused.iter().any(|(k, r)| *k == kind && *r == key),
                "{kind} rule {key} ({}) has no refused case",
                site.rule
            );
            assert!(
                covered_accepted
                    .iter()
                    .any(|(k, r)| *k == kind && *r == key),
                "{kind} rule {key} has no accepted case"
            );
        }
    }
}

/// `tenant.url` is immutable: a transition rule, checked on update and on every patch type.
#[tokio::test]
async fn transition_rules_see_the_old_object_on_update_and_patch() {
    let s = standin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    for crd in certrotor::api::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let api = dynamic_api(&s, "TenantCertificate");
    let mut obj = tenant_certificate();
    obj["metadata"] = json!({"name": "moving"});
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
        .unwrap();
    let refusal = "TenantCertificate.certrotor.io \"moving\" is invalid: spec.tenant.url: Invalid value: \"string\": tenant.url is immutable: create a new TenantCertificate for another tenant (deletionPolicy applies to the old one)";
    let moved = json!({"spec": {"tenant": {"url": "https://openam-other.id.forgerock.io"}}});
    let (code, message) = api_message(
        api.patch("moving", &PatchParams::default(), &Patch::Merge(&moved))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, message.as_str()), (422, refusal));
    let mut replaced = created.clone();
    replaced.data["spec"]["tenant"]["url"] = json!("https://openam-other.id.forgerock.io");
    let (code, message) = api_message(
        api.replace("moving", &PostParams::default(), &replaced)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, message.as_str()), (422, refusal));
    let mut applied = tenant_certificate();
    applied["metadata"] = json!({"name": "moving"});
    applied["spec"]["tenant"]["url"] = json!("https://openam-other.id.forgerock.io");
    let (code, message) = api_message(
        api.patch(
            "moving",
            &PatchParams::apply("gitops").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, message.as_str()), (422, refusal));
    // Other changes still go through, and the rules see the new values.
    let renewed = json!({"spec": {"renewBefore": "480h"}});
    api.patch("moving", &PatchParams::default(), &Patch::Merge(&renewed))
        .await
        .unwrap();
    let wildcard = json!({"spec": {"csr": {"subjectAlternativeNames": ["*.example.com"]}}});
    let (code, _) = api_message(
        api.patch("moving", &PatchParams::default(), &Patch::Merge(&wildcard))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
}
