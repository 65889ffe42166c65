#!/usr/bin/env bash
# Checks the Helm chart, the kustomize base and the Argo CD health checks:
# helm lint, helm template (defaults and tests/packaging/all-options.yaml), kubectl kustomize deploy/,
# the CRDs' CEL rules on every install path (certrotor crd --check), checkov on everything
# rendered and on the Dockerfile, hadolint, yamllint, the Lua health-check tests, RBAC exactness, and
# the Grafana dashboard (charts/certrotor/dashboards/): its ConfigMap renders, it queries only the
# metrics docs/metrics.md lists.
# Needs python3 (3.11) with pip and the package registries; installs the rest with scripts/ci-tools.sh.
#
#   scripts/check-packaging.sh            run every check; the last line counts passed and failed
#   scripts/check-packaging.sh --update   first rewrite the generated copies (chart CRDs, deploy/base)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_BIN="$(bash scripts/ci-tools.sh | tail -1)"
export PATH="$TOOLS_BIN:$PATH"
PY="$TOOLS_BIN/../venv/bin/python"
CHART=charts/certrotor
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# The kustomize base is the chart rendered cluster-wide with deploy/base/values.yaml.
render_base() {
    {
        echo "# Generated from $CHART with deploy/base/values.yaml by scripts/check-packaging.sh --update."
        echo "# Do not edit: change the chart, then regenerate."
        helm template certrotor "$CHART" --namespace certrotor-system -f deploy/base/values.yaml
    }
}

if [ "${1:-}" = "--update" ]; then
    cp crds/certrotor.yaml "$CHART/crds/certrotor.yaml"
    cp crds/certrotor.yaml deploy/base/crds.yaml
    render_base >deploy/base/certrotor.yaml
    echo "updated $CHART/crds/certrotor.yaml, deploy/base/crds.yaml, deploy/base/certrotor.yaml"
fi

passed=0
failed=0
failures=()
# check NAME COMMAND...: runs one check, keeps going when it fails, and counts it.
check() {
    local name="$1"
    shift
    echo "== $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "FAILED: $name"
    fi
}

same_file() { diff -u "$1" "$2" && echo "$2 equals $1"; }
# Renders must succeed; the output is kept for the later checks.
template_to() {
    local out="$1"
    shift
    helm template certrotor "$CHART" --namespace certrotor-system "$@" >"$out" && echo "rendered $out"
}
must_fail() {
    local want="$1"
    shift
    local err
    if err="$("$@" 2>&1 >/dev/null)"; then
        echo "expected a failure: $*"
        return 1
    fi
    grep -qF -- "$want" <<<"$err" && echo "rejected as expected: $want"
}
base_is_fresh() {
    render_base >"$OUT/base.yaml"
    diff -u deploy/base/certrotor.yaml "$OUT/base.yaml" >&2 || {
        echo "deploy/base/certrotor.yaml is stale: run scripts/check-packaging.sh --update"
        return 1
    }
    echo "deploy/base/certrotor.yaml matches the chart"
}
kustomize_matches_chart() {
    kubectl kustomize deploy/ >"$OUT/kustomize.yaml" || return 1
    "$PY" tests/packaging/compare_renders.py "$OUT/kustomize.yaml" "$OUT/helm-default.yaml" crds/certrotor.yaml
}
# What a real API server checks when the CRDs are applied: every CEL rule compiles, stays within
# the cost budget and reads only bounded arrays, strings and maps. Run on each install path.
crd_rules_bounded() {
    helm template certrotor "$CHART" --namespace certrotor-system --include-crds >"$OUT/helm-crds.yaml" || return 1
    kubectl kustomize deploy/ >"$OUT/kustomize-crds.yaml" || return 1
    cargo run --locked --quiet -- crd --check crds/certrotor.yaml "$OUT/helm-crds.yaml" "$OUT/kustomize-crds.yaml"
}
run_checkov() {
    mkdir -p "$OUT/checkov"
    cp "$OUT/helm-default.yaml" "$OUT/helm-all-options.yaml" "$OUT/kustomize.yaml" "$OUT/checkov/"
    # --skip-download: no Prisma Cloud calls (CI reaches package registries only). Skips are
    # annotations in the chart, each with its reason (templates/deployment.yaml).
    checkov --directory "$OUT/checkov" --framework kubernetes --skip-download --compact --quiet
}
run_checkov_dockerfile() {
    checkov --file Dockerfile --framework dockerfile --skip-download --compact --quiet
}
run_hadolint() { hadolint Dockerfile && echo "hadolint: clean"; }
# One version everywhere: the crate, the chart's appVersion (image tag) and the image's label.
versions_agree() {
    local crate chart image
    crate="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
    chart="$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' "$CHART/Chart.yaml")"
    image="$(sed -n 's/^ARG VERSION=\(.*\)$/\1/p' Dockerfile)"
    echo "Cargo.toml $crate, Chart.yaml appVersion $chart, Dockerfile VERSION $image"
    [ -n "$crate" ] && [ "$crate" = "$chart" ] && [ "$crate" = "$image" ]
}
# grafana.dashboards.enabled renders the dashboard ConfigMap for Grafana's sidecar.
dashboard_configmap_renders() {
    helm template certrotor "$CHART" --namespace certrotor-system --set grafana.dashboards.enabled=true \
        --show-only templates/dashboard-configmap.yaml >"$OUT/dashboard.yaml" || return 1
    grep -q '^kind: ConfigMap$' "$OUT/dashboard.yaml" && grep -q 'grafana_dashboard: "1"' "$OUT/dashboard.yaml" &&
        grep -q '^  certrotor.json: ' "$OUT/dashboard.yaml" && grep -q '"uid": "certrotor"' "$OUT/dashboard.yaml" &&
        echo "dashboard ConfigMap rendered with grafana_dashboard and certrotor.json"
}
run_yamllint() {
    yamllint --strict -c tests/packaging/yamllint.yaml \
        "$CHART/Chart.yaml" "$CHART/values.yaml" tests/packaging/*.yaml \
        deploy/kustomization.yaml deploy/base/kustomization.yaml deploy/base/namespace.yaml \
        deploy/base/values.yaml deploy/argocd/ deploy/examples/ deploy/krew/ && echo "yamllint: clean"
}

check "chart CRDs equal crds/certrotor.yaml" same_file crds/certrotor.yaml "$CHART/crds/certrotor.yaml"
check "kustomize CRDs equal crds/certrotor.yaml" same_file crds/certrotor.yaml deploy/base/crds.yaml
check "helm lint (defaults)" helm lint --strict "$CHART"
check "helm lint (all options)" helm lint --strict "$CHART" -f tests/packaging/all-options.yaml
check "helm template (defaults)" template_to "$OUT/helm-default.yaml"
check "helm template (all options)" template_to "$OUT/helm-all-options.yaml" -f tests/packaging/all-options.yaml
check "schema rejects an unknown value" \
    must_fail "additional properties 'replicas' not allowed" helm template x "$CHART" --set replicas=2
check "two replicas without leader election are refused" \
    must_fail "replicaCount > 1 needs leaderElection.enabled" helm template x "$CHART" --set leaderElection.enabled=false
check "deploy/base is the chart's rendering" base_is_fresh
check "kubectl kustomize deploy/ equals the chart's objects" kustomize_matches_chart
check "CRD validation rules are bounded (crds/, helm --include-crds, kustomize)" crd_rules_bounded
check "checkov" run_checkov
check "checkov (Dockerfile)" run_checkov_dockerfile
check "hadolint (Dockerfile)" run_hadolint
check "versions agree" versions_agree
check "yamllint" run_yamllint
check "RBAC is exactly the operator's calls" \
    "$PY" tests/packaging/check_rbac.py "$OUT/helm-default.yaml" "$OUT/helm-all-options.yaml" "$OUT/kustomize.yaml"
check "RBAC tests" "$PY" tests/packaging/test_rbac.py
check "Argo CD health checks (Lua)" "$PY" tests/packaging/test_argocd_health.py
check "Grafana dashboard ConfigMap renders" dashboard_configmap_renders
check "Grafana dashboard queries only emitted metrics" "$PY" tests/packaging/test_dashboard.py

for name in "${failures[@]}"; do echo "failed: $name"; done
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
