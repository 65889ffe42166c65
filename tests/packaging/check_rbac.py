"""Checks that rendered manifests grant the operator exactly the Kubernetes API calls it makes.

Usage: python tests/packaging/check_rbac.py RENDERED.yaml...   (exit 1 and a list of problems)

The operator's calls (src/controller) are the contract below. Everything but leases must be granted
either by one ClusterRole (all namespaces) or, when the Deployment sets CERTROTOR_NAMESPACES, by a
Role in each of those namespaces and no ClusterRole; leases only by a Role in the operator's own
namespace, with get/patch limited to the Lease the Deployment names in --lease-name.
"""

import sys
from collections import defaultdict

import yaml

OPERATOR_RULES = {
    ("certrotor.io", "tenantcertificates"): {"list", "watch", "patch"},
    ("certrotor.io", "deviceidcredentials"): {"get", "list", "watch"},
    ("certrotor.io", "tenantcertificates/status"): {"patch"},
    ("certrotor.io", "deviceidcredentials/status"): {"patch"},
    ("certrotor.io", "tenantcertificates/finalizers"): {"update"},
    ("certrotor.io", "deviceidcredentials/finalizers"): {"update"},
    ("", "secrets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
# With the cert-manager integration on (CERTROTOR_CERT_MANAGER, the chart's certManager.enabled).
CERT_MANAGER_RULES = {
    ("cert-manager.io", "certificaterequests"): {"create", "get", "list", "watch", "delete"},
}
LEASE = ("coordination.k8s.io", "leases")
LEASE_VERBS = {"get", "create", "patch"}
# Verbs that work on a named object, so resourceNames can (and should) limit them.
NAMED_VERBS = {"get", "update", "patch", "delete"}


def grants(role):
    """(group, resource) -> {verb: set of resourceNames, or None for any name}."""
    out = defaultdict(dict)
    for rule in role.get("rules") or []:
        names = rule.get("resourceNames")
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    held = out[(group, resource)]
                    if names is None or held.get(verb, set()) is None:
                        held[verb] = None
                    else:
                        held[verb] = held.get(verb, set()) | set(names)
    return out


def verbs(granted):
    return {key: set(held) for key, held in granted.items()}


def deployment_settings(docs):
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    lease = None
    for arg in container.get("args") or []:
        if arg.startswith("--lease-name="):
            lease = arg.split("=", 1)[1]
    namespaces = [n for n in (env.get("CERTROTOR_NAMESPACES") or "").split(",") if n]
    return {
        "namespace": deploy["metadata"].get("namespace"),
        "serviceAccount": pod.get("serviceAccountName", "default"),
        "lease": lease,
        "namespaces": namespaces,
        "certManager": (env.get("CERTROTOR_CERT_MANAGER") or "true") != "false",
    }


def bound_to(docs, binding_kind, role_kind, role, account, account_ns):
    """True when a binding of binding_kind grants role to the ServiceAccount."""
    for b in docs:
        if b["kind"] != binding_kind or b["roleRef"]["kind"] != role_kind:
            continue
        if b["roleRef"]["name"] != role["metadata"]["name"]:
            continue
        if binding_kind == "RoleBinding" and b["metadata"].get("namespace") != role["metadata"].get("namespace"):
            continue
        for s in b.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and s.get("name") == account and s.get("namespace") == account_ns:
                return True
    return False


def check(docs):
    """Problems found in one rendering (a list of manifests); empty when the RBAC is exact."""
    docs = [d for d in docs if d]
    problems = []
    settings = deployment_settings(docs)
    account, home = settings["serviceAccount"], settings["namespace"]
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    roles = [d for d in docs if d["kind"] == "Role"]

    for role in cluster_roles + roles:
        for rule in role.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if "*" in (rule.get(field) or []):
                    problems.append(f"{role['kind']} {role['metadata']['name']}: wildcard in {field}")
            if rule.get("nonResourceURLs"):
                problems.append(f"{role['kind']} {role['metadata']['name']}: nonResourceURLs granted")

    def expect_exact(role, want, where):
        got = verbs(grants(role))
        if got != want:
            for key in sorted(set(got) | set(want)):
                extra = got.get(key, set()) - want.get(key, set())
                missing = want.get(key, set()) - got.get(key, set())
                label = f"{key[0] or 'core'}/{key[1]}"
                if extra:
                    problems.append(f"{where}: grants more than the operator uses on {label}: {sorted(extra)}")
                if missing:
                    problems.append(f"{where}: lacks {label}: {sorted(missing)}")

    operator_rules = dict(OPERATOR_RULES)
    if settings["certManager"]:
        operator_rules.update(CERT_MANAGER_RULES)
    lease_roles = [r for r in roles if LEASE in grants(r)]
    operator_roles = [r for r in roles if r not in lease_roles]

    if settings["namespaces"]:
        if cluster_roles:
            problems.append("CERTROTOR_NAMESPACES is set, yet a ClusterRole is rendered")
        by_ns = defaultdict(list)
        for r in operator_roles:
            by_ns[r["metadata"].get("namespace")].append(r)
        for ns in settings["namespaces"]:
            if len(by_ns.get(ns, [])) != 1:
                problems.append(f"namespace {ns}: expected one Role for the operator, found {len(by_ns.get(ns, []))}")
                continue
            role = by_ns[ns][0]
            expect_exact(role, operator_rules, f"Role {ns}/{role['metadata']['name']}")
            if not bound_to(docs, "RoleBinding", "Role", role, account, home):
                problems.append(f"Role {ns}/{role['metadata']['name']} is not bound to ServiceAccount {home}/{account}")
        for ns in set(by_ns) - set(settings["namespaces"]):
            problems.append(f"Role in namespace {ns}, which the operator does not watch")
    else:
        if operator_roles:
            problems.append("cluster-wide mode, yet namespaced Roles grant operator rules")
        if len(cluster_roles) != 1:
            problems.append(f"expected one ClusterRole, found {len(cluster_roles)}")
        for role in cluster_roles:
            expect_exact(role, operator_rules, f"ClusterRole {role['metadata']['name']}")
            if not bound_to(docs, "ClusterRoleBinding", "ClusterRole", role, account, home):
                problems.append(f"ClusterRole {role['metadata']['name']} is not bound to ServiceAccount {home}/{account}")

    if settings["lease"] is None:
        if lease_roles:
            problems.append("leases granted, yet the Deployment names no --lease-name")
    elif len(lease_roles) != 1:
        problems.append(f"expected one Role granting leases, found {len(lease_roles)}")
    else:
        role = lease_roles[0]
        where = f"Role {role['metadata'].get('namespace')}/{role['metadata']['name']}"
        if role["metadata"].get("namespace") != home:
            problems.append(f"{where}: leases must be granted in the operator's namespace {home}")
        expect_exact(role, {LEASE: LEASE_VERBS}, where)
        for verb, names in grants(role)[LEASE].items():
            if verb in NAMED_VERBS and names != {settings["lease"]}:
                problems.append(f"{where}: {verb} on leases must be limited to {settings['lease']!r}, is {names}")
        if not bound_to(docs, "RoleBinding", "Role", role, account, home):
            problems.append(f"{where} is not bound to ServiceAccount {home}/{account}")
    return problems


def main(paths):
    failed = False
    for path in paths:
        with open(path) as f:
            problems = check(list(yaml.safe_load_all(f)))
        for p in problems:
            print(f"{path}: {p}")
        failed |= bool(problems)
        if not problems:
            print(f"{path}: RBAC grants exactly the operator's calls")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
