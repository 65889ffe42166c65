"""Checks that `kubectl kustomize deploy/` gives the chart's default objects, plus the CRDs and the
Namespace: the two install paths must not drift apart.

Usage: python tests/packaging/compare_renders.py KUSTOMIZE.yaml HELM_DEFAULT.yaml CRDS.yaml
"""

import sys

import yaml

# Labels that only say which tool applied the objects.
TOOL_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(obj):
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def normalise(obj):
    def strip(meta):
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in TOOL_LABELS}
        if labels:
            meta["labels"] = labels
        else:
            meta.pop("labels", None)

    strip(obj["metadata"])
    template = obj.get("spec", {}).get("template") if isinstance(obj.get("spec"), dict) else None
    if template:
        strip(template["metadata"])
    return obj


def compare(kustomized, helm, crds):
    problems = []
    want = {key(o): normalise(o) for o in helm + crds}
    got = {key(o): normalise(o) for o in kustomized if o["kind"] != "Namespace"}
    namespaces = [o for o in kustomized if o["kind"] == "Namespace"]
    homes = {k[2] for k in want if k[2]}
    if [n["metadata"]["name"] for n in namespaces] != sorted(homes):
        problems.append(f"Namespace objects {[n['metadata']['name'] for n in namespaces]}, objects live in {sorted(homes)}")
    for k in sorted(set(want) - set(got)):
        problems.append(f"missing from kustomize: {k}")
    for k in sorted(set(got) - set(want)):
        problems.append(f"only in kustomize: {k}")
    for k in sorted(set(want) & set(got)):
        if want[k] != got[k]:
            problems.append(f"differs: {k}")
    return problems


def main(kustomize_path, helm_path, crds_path):
    problems = compare(load(kustomize_path), load(helm_path), load(crds_path))
    for p in problems:
        print(p)
    if not problems:
        print("kustomize renders the chart's default objects, the CRDs and the Namespace")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
