"""The chart's RBAC is exactly the operator's calls, and check_rbac notices any drift from that.

Needs `helm` on PATH (scripts/check-packaging.sh puts .ci/tools/bin there).
Run: python tests/packaging/test_rbac.py
"""

import copy
import pathlib
import subprocess
import sys
import unittest

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import check_rbac  # noqa: E402


def render(*args):
    out = subprocess.run(
        ["helm", "template", "rel", str(ROOT / "charts" / "certrotor"), "--namespace", "ops", *args],
        check=True, capture_output=True, text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs, kind, name_suffix=""):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix))


def rule_for(role, resource):
    return next(r for r in role["rules"] if resource in r["resources"])


class ChartRbacTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = render()
        cls.namespaced = render("--set", "watchNamespaces={identity,deviceid}")

    def test_cluster_wide_default_is_exact(self):
        self.assertEqual(check_rbac.check(self.cluster), [])

    def test_watch_namespaces_gives_roles_and_no_cluster_role(self):
        self.assertEqual(check_rbac.check(self.namespaced), [])
        self.assertFalse([d for d in self.namespaced if d["kind"] in ("ClusterRole", "ClusterRoleBinding")])
        role_namespaces = {d["metadata"]["namespace"] for d in self.namespaced
                           if d["kind"] == "Role" and not d["metadata"]["name"].endswith("leader-election")}
        self.assertEqual(role_namespaces, {"identity", "deviceid"})

    def test_all_options_is_exact(self):
        self.assertEqual(check_rbac.check(render("-f", str(HERE / "all-options.yaml"))), [])

    def test_without_leader_election_no_lease_is_granted(self):
        docs = render("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
        self.assertEqual(check_rbac.check(docs), [])
        self.assertFalse([d for d in docs if d["kind"] == "Role"])


class CheckRbacNoticesDriftTest(unittest.TestCase):
    """Each mutation of a correct rendering must be reported."""

    def mutated(self, docs, mutate):
        docs = copy.deepcopy(docs)
        mutate(docs)
        return check_rbac.check(docs)

    def setUp(self):
        self.cluster = render()

    def assertReported(self, mutate, fragment, docs=None):
        problems = self.mutated(docs or self.cluster, mutate)
        self.assertTrue(any(fragment in p for p in problems), problems)

    def test_an_extra_verb(self):
        self.assertReported(lambda d: rule_for(find(d, "ClusterRole"), "configmaps")["verbs"].append("list"),
                            "grants more than the operator uses on core/configmaps: ['list']")

    def test_a_missing_verb(self):
        self.assertReported(lambda d: rule_for(find(d, "ClusterRole"), "events")["verbs"].remove("patch"),
                            "lacks events.k8s.io/events: ['patch']")

    def test_an_extra_resource(self):
        self.assertReported(
            lambda d: find(d, "ClusterRole")["rules"].append(
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}),
            "grants more than the operator uses on core/pods")

    def test_a_wildcard(self):
        self.assertReported(lambda d: rule_for(find(d, "ClusterRole"), "secrets").update(verbs=["*"]),
                            "wildcard in verbs")

    def test_lease_get_not_limited_by_name(self):
        def widen(docs):
            for rule in find(docs, "Role", "leader-election")["rules"]:
                rule.pop("resourceNames", None)
        self.assertReported(widen, "get on leases must be limited to")

    def test_leases_in_the_cluster_role(self):
        self.assertReported(
            lambda d: find(d, "ClusterRole")["rules"].append(
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}),
            "grants more than the operator uses on coordination.k8s.io/leases")

    def test_an_unbound_cluster_role(self):
        self.assertReported(lambda d: find(d, "ClusterRoleBinding")["subjects"][0].update(name="other"),
                            "is not bound to ServiceAccount")

    def test_a_cluster_role_while_watching_namespaces(self):
        namespaced = render("--set", "watchNamespaces={identity}")
        self.assertReported(lambda d: d.append(find(self.cluster, "ClusterRole")),
                            "CERTROTOR_NAMESPACES is set, yet a ClusterRole is rendered", namespaced)

    def test_a_watched_namespace_without_role(self):
        namespaced = render("--set", "watchNamespaces={identity}")

        def drop(docs):
            docs.remove(find(docs, "Role", "rel-certrotor"))
        self.assertReported(drop, "namespace identity: expected one Role", namespaced)


if __name__ == "__main__":
    unittest.main(verbosity=1)
