//! The stand-in driven by a real `kubectl`: `$KUBECTL`, else the one `scripts/ci-tools.sh`
//! installs in `.ci/tools/bin` (kubectl 1.33), else one on PATH. CI installs it before the tests
//! run, so there (`CI` set) a missing kubectl fails the test; elsewhere the test says so and skips.

#[path = "common/kubectl.rs"]
mod kubectl;
use kubectl::kubectl_or_skip;

use std::path::PathBuf;
use std::time::Duration;

use certrotor::sim::kube::StandIn;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    /// Runs kubectl with `args` (and `stdin`), returning stdout; panics with stderr on failure.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.try_run(args, stdin).await;
        assert!(ok, "kubectl {args:?} failed:\n{err}\n{out}");
        out
    }

    async fn try_run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(args)
            .arg("--cache-dir")
            .arg(&self.cache)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("kubectl starts");
        let mut input = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finishes within 60s")
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A stand-in, and kubectl configured for it (the directory holds kubeconfig and cache).
async fn standin_with_kubectl(binary: PathBuf) -> (StandIn, tempfile::TempDir, Kubectl) {
    let s = StandIn::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl {
        binary,
        kubeconfig: dir.path().join("kubeconfig"),
        cache: dir.path().join("cache"),
    };
    s.write_kubeconfig(&k.kubeconfig).unwrap();
    (s, dir, k)
}

const DEVICE: &str = "apiVersion: certrotor.io/v1alpha1
kind: DeviceIdCredential
metadata:
  name: vendor
  labels:
    team: edge
spec:
  endpoint: https://cie.example
  onboardingSecretRef:
    name: onboarding
  certName: vendor-cert
  secretName: vendor-tls
";

#[tokio::test]
async fn kubectl_works_against_the_standin() {
    let Some(binary) = kubectl_or_skip("the kubectl checks") else {
        return;
    };
    let (s, _dir, k) = standin_with_kubectl(binary).await;

    let version = k.run(&["version", "-o", "json"], None).await;
    assert!(version.contains("\"serverVersion\""), "{version}");

    // CRDs, then a custom object with client-side apply, then discovery by short name.
    k.run(&["apply", "-f", "-"], Some(&certrotor::api::crds_yaml()))
        .await;
    let resources = k.run(&["api-resources"], None).await;
    assert!(
        resources.contains("didc") && resources.contains("tcert"),
        "{resources}"
    );
    let applied = k.run(&["apply", "-f", "-"], Some(DEVICE)).await;
    assert!(applied.contains("created"), "{applied}");
    let again = k.run(&["apply", "-f", "-"], Some(DEVICE)).await;
    assert!(again.contains("unchanged"), "{again}");
    let changed = DEVICE.replace("vendor-cert", "vendor-cert-2");
    let reapplied = k.run(&["apply", "-f", "-"], Some(&changed)).await;
    assert!(reapplied.contains("configured"), "{reapplied}");

    // `kubectl get` prints the CRD's columns from the server's Table.
    let table = k.run(&["get", "didc"], None).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("vendor"), "{table}");
    let wide = k
        .run(&["get", "didc", "-l", "team=edge", "-o", "wide"], None)
        .await;
    assert!(wide.contains("vendor"), "{wide}");
    let none = k.run(&["get", "didc", "-l", "team=core"], None).await;
    assert!(!none.contains("vendor"), "{none}");
    let everywhere = k.run(&["get", "didc", "-A"], None).await;
    assert!(everywhere.starts_with("NAMESPACE"), "{everywhere}");
    let explained = k.run(&["explain", "didc.spec.certName"], None).await;
    assert!(explained.contains("DeviceIdCredential"), "{explained}");
    k.run(&["create", "namespace", "team"], None).await;
    let namespaces = k.run(&["get", "namespaces"], None).await;
    assert!(
        namespaces.contains("team") && namespaces.contains("Active"),
        "{namespaces}"
    );
    let json = k.run(&["get", "didc", "vendor", "-o", "json"], None).await;
    let obj: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(obj["spec"]["certName"], "vendor-cert-2");
    assert_eq!(
        obj["spec"]["privateKey"]["algorithm"], "ECDSA",
        "schema defaults"
    );

    // Events written by kube's Recorder show up in `kubectl describe`.
    let didc: Api<certrotor::api::DeviceIdCredential> = Api::default_namespaced(s.client());
    let live = didc.get("vendor").await.unwrap();
    let recorder = Recorder::new(s.client(), Reporter::from("certrotor"));
    recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Refreshed".into(),
                note: Some("issued a new client certificate".into()),
                action: "Refresh".into(),
                secondary: None,
            },
            &live.object_ref(&()),
        )
        .await
        .unwrap();
    let described = k.run(&["describe", "didc", "vendor"], None).await;
    assert!(
        described.contains("issued a new client certificate"),
        "{described}"
    );
    let events = k.run(&["get", "events"], None).await;
    assert!(events.contains("Refreshed"), "{events}");

    // Built-ins: create, strategic-merge label/annotate, JSON patch, server-side apply.
    k.run(
        &[
            "create",
            "secret",
            "generic",
            "onboarding",
            "--from-literal=apiKey=x",
        ],
        None,
    )
    .await;
    k.run(
        &["label", "secret", "onboarding", "certrotor.io/watched=true"],
        None,
    )
    .await;
    k.run(&["annotate", "secret", "onboarding", "note=kept"], None)
        .await;
    k.run(
        &[
            "patch",
            "secret",
            "onboarding",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/extra","value":"eQ=="}]"#,
        ],
        None,
    )
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(s.client());
    let onboarding = secrets.get("onboarding").await.unwrap();
    assert_eq!(onboarding.labels()["certrotor.io/watched"], "true");
    assert_eq!(onboarding.annotations()["note"], "kept");
    assert!(onboarding.data.unwrap().contains_key("extra"));
    let ssa = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: \"1\"\n";
    k.run(&["apply", "--server-side", "-f", "-"], Some(ssa))
        .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(s.client());
    assert_eq!(cms.get("ssa").await.unwrap().data.unwrap()["a"], "1");

    // Waiting on a condition the "operator" sets, then deleting (kubectl waits for it to go).
    let waiter = tokio::spawn({
        let k = Kubectl {
            binary: k.binary.clone(),
            kubeconfig: k.kubeconfig.clone(),
            cache: k.cache.clone(),
        };
        async move {
            k.run(
                &[
                    "wait",
                    "--for=condition=Ready",
                    "didc/vendor",
                    "--timeout=30s",
                ],
                None,
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "Issued", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    didc.patch_status(
        "vendor",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited.contains("condition met"), "{waited}");
    let deleted = k.run(&["delete", "didc", "vendor"], None).await;
    assert!(deleted.contains("deleted"), "{deleted}");
    assert!(didc.get("vendor").await.is_err());
    s.shutdown().await;
}

const TENANT_CERTIFICATE: &str = "apiVersion: certrotor.io/v1alpha1
kind: TenantCertificate
metadata:
  name: idp-example-com
spec:
  tenant:
    url: https://openam-acme.id.forgerock.io
    credentialsSecretRef:
      name: aic
  secretRef:
    name: idp-example-com-tls
";

/// After a rotation, `kubectl describe` names the current certificate in its newest Events:
/// a repeated message is counted in its series, a new message is a new Event.
#[tokio::test]
async fn describe_shows_the_newest_message_of_each_event() {
    use certrotor::controller::events::{EventRecorder, EventType};
    let Some(binary) = kubectl_or_skip("the kubectl checks") else {
        return;
    };
    let (s, _dir, k) = standin_with_kubectl(binary).await;
    k.run(&["apply", "-f", "-"], Some(&certrotor::api::crds_yaml()))
        .await;
    k.run(&["apply", "-f", "-"], Some(TENANT_CERTIFICATE)).await;
    let tcerts: Api<certrotor::api::TenantCertificate> = Api::default_namespaced(s.client());
    let regarding = tcerts.get("idp-example-com").await.unwrap().object_ref(&());
    let recorder = EventRecorder::new(s.client(), "certrotor", None);
    let steps = [
        ("Uploaded", "uploaded certificate ccrt-first"),
        ("Ready", "certificate ccrt-first is active and live"),
        ("Ready", "certificate ccrt-first is active and live"),
        ("Uploaded", "uploaded certificate ccrt-second"),
        ("Ready", "certificate ccrt-second is active and live"),
    ];
    for (reason, note) in steps {
        recorder
            .publish(&regarding, EventType::Normal, reason, note)
            .await
            .unwrap();
        // Distinct timestamps, so kubectl's order (by last seen) is the order they happened.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let described = k.run(&["describe", "tcert", "idp-example-com"], None).await;
    let events: Vec<&str> = described
        .lines()
        .skip_while(|l| !l.starts_with("Events:"))
        .filter(|l| l.trim_start().starts_with("Normal"))
        .collect();
    assert_eq!(events.len(), 4, "four distinct messages:\n{described}");
    let newest = events.last().unwrap();
    assert!(
        newest.contains("Ready") && newest.ends_with("certificate ccrt-second is active and live"),
        "the newest Event names the current certificate:\n{described}"
    );
    assert!(
        events
            .iter()
            .any(|l| l.contains("(x2 over")
                && l.ends_with("certificate ccrt-first is active and live")),
        "the repeated message is one series of two:\n{described}"
    );
    assert!(
        events
            .iter()
            .any(|l| l.ends_with("uploaded certificate ccrt-second")),
        "{described}"
    );
    // Two Event objects for the four `Ready`/`Uploaded` messages of the first certificate, not
    // three: a repeat patches its series instead of creating another object.
    let listed = k.run(&["get", "events", "-o", "name"], None).await;
    assert_eq!(listed.lines().count(), 4, "{listed}");
    s.shutdown().await;
}

/// A refusal reads in kubectl as a real API server's does: the kind, the name, and each field's
/// error, with the CEL rule's message — for an object that breaks a rule and for a CRD whose rule
/// reads an unbounded array.
#[tokio::test]
async fn kubectl_prints_each_refused_field_with_its_message() {
    let Some(binary) = kubectl_or_skip("the kubectl checks") else {
        return;
    };
    let (_s, _dir, k) = standin_with_kubectl(binary).await;
    let crds = certrotor::api::crds_yaml();
    k.run(&["apply", "-f", "-"], Some(&crds)).await;

    let wildcard = TENANT_CERTIFICATE.replace(
        "  secretRef:\n    name: idp-example-com-tls\n",
        "  secretRef:\n    name: idp-example-com-tls\n  keySource: Tenant\n  csr:\n    commonName: idp.example.com\n    subjectAlternativeNames: [\"*.example.com\"]\n",
    );
    assert_ne!(wildcard, TENANT_CERTIFICATE, "the manifest was changed");
    let (ok, _, err) = k.try_run(&["apply", "-f", "-"], Some(&wildcard)).await;
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "The TenantCertificate \"idp-example-com\" is invalid: spec.csr.subjectAlternativeNames: \
         Invalid value: \"array\": wildcard subjectAlternativeNames are rejected by the tenant",
    );

    // The same CRD with the SANs unbounded, as issue 9's real server refused it.
    let unbounded = crds.replacen(
        "maxLength: 253\n                      minLength: 1\n                      type: string\n                    maxItems: 100\n",
        "minLength: 1\n                      type: string\n",
        1,
    );
    assert_ne!(unbounded, crds, "the SAN bounds were removed");
    let (ok, _, err) = k
        .try_run(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&unbounded),
        )
        .await;
    assert!(!ok);
    assert!(
        err.starts_with(
            "The CustomResourceDefinition \"tenantcertificates.certrotor.io\" is invalid: \n* "
        ),
        "{err}"
    );
    assert!(
        err.contains("\n* spec.validation.openAPIV3Schema.properties[spec].properties[csr].properties[subjectAlternativeNames].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x"),
        "{err}"
    );
}
