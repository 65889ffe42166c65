"""Runs the Argo CD health checks in deploy/argocd/argocd-cm-patch.yaml against sample objects.

Argo CD evaluates a health script with the resource as the global `obj` and reads the table it
returns; lupa's Lua 5.4 does the same here. Run: python tests/packaging/test_argocd_health.py
"""

import pathlib
import unittest

import lupa.lua54 as lua54
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATCH = ROOT / "deploy" / "argocd" / "argocd-cm-patch.yaml"
KINDS = ("TenantCertificate", "DeviceIdCredential")


def health_scripts():
    data = yaml.safe_load(PATCH.read_text())["data"]
    return {kind: data[f"resource.customizations.health.certrotor.io_{kind}"] for kind in KINDS}


def to_lua(lua, value):
    """Python → Lua values the way Argo CD hands JSON to Lua: objects and arrays become tables,
    and every number is a float (JSON numbers decode to float64 there)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def run_health(script, obj):
    lua = lua54.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    hs = lua.execute(script)
    return {"status": hs["status"], "message": hs["message"]}


def condition(type_, status, reason="Reason", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-23T10:00:00Z", "observedGeneration": 3}


def resource(kind, conditions=None, generation=3, observed=3, with_status=True):
    obj = {
        "apiVersion": "certrotor.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "sample", "namespace": "identity", "generation": generation},
        "spec": {},
    }
    if with_status:
        obj["status"] = {"observedGeneration": observed}
        if conditions is not None:
            obj["status"]["conditions"] = conditions
    return obj


class HealthCheckTest(unittest.TestCase):
    def assertHealth(self, conditions, status, message, **kwargs):
        for kind, script in health_scripts().items():
            with self.subTest(kind=kind):
                got = run_health(script, resource(kind, conditions, **kwargs))
                self.assertEqual(got, {"status": status, "message": message})

    def test_both_kinds_share_one_script(self):
        scripts = health_scripts()
        self.assertEqual(scripts["TenantCertificate"], scripts["DeviceIdCredential"])

    def test_ready_is_healthy_with_its_message(self):
        self.assertHealth(
            [condition("Ready", "True", "Live", "certificate abc123 is live until 2027-02-01"),
             condition("Reconciling", "False", "Live"),
             condition("Stalled", "False", "Live")],
            "Healthy", "certificate abc123 is live until 2027-02-01")

    def test_stalled_is_degraded_with_its_message(self):
        self.assertHealth(
            [condition("Ready", "False", "KeyMismatch", "tls.key does not match the leaf"),
             condition("Reconciling", "False", "KeyMismatch"),
             condition("Stalled", "True", "KeyMismatch", "tls.key does not match the leaf")],
            "Degraded", "tls.key does not match the leaf")

    def test_stalled_wins_over_ready(self):
        # The old certificate is still live, but the rotation cannot go on without a person.
        self.assertHealth(
            [condition("Ready", "True", "Live", "certificate abc123 is live"),
             condition("Stalled", "True", "WildcardName", "wildcard names are not accepted")],
            "Degraded", "wildcard names are not accepted")

    def test_reconciling_is_progressing_with_its_message(self):
        self.assertHealth(
            [condition("Ready", "False", "WaitingForLive", "waiting for live"),
             condition("Reconciling", "True", "WaitingForLive", "certificate def456 active, not yet live"),
             condition("Stalled", "False", "WaitingForLive")],
            "Progressing", "certificate def456 active, not yet live")

    def test_not_ready_without_reconciling_shows_ready_message(self):
        self.assertHealth(
            [condition("Ready", "False", "WaitingForSignedChain", "waiting for the CA to sign CSR 7")],
            "Progressing", "waiting for the CA to sign CSR 7")

    def test_reason_stands_in_for_an_empty_message(self):
        self.assertHealth([condition("Stalled", "True", "RateLimited", "")],
                          "Degraded", "RateLimited")

    def test_unknown_ready_is_progressing(self):
        self.assertHealth([condition("Ready", "Unknown", "Pending", "first reconcile")],
                          "Progressing", "first reconcile")

    def test_no_status_is_progressing(self):
        self.assertHealth(None, "Progressing", "Waiting for certrotor to reconcile", with_status=False)

    def test_status_without_conditions_is_progressing(self):
        self.assertHealth(None, "Progressing", "Waiting for certrotor to reconcile")

    def test_empty_conditions_is_progressing(self):
        self.assertHealth([], "Progressing", "Waiting for certrotor to reconcile")

    def test_status_of_an_older_generation_is_progressing_even_if_ready(self):
        self.assertHealth([condition("Ready", "True", "Live", "live")],
                          "Progressing", "Waiting for certrotor to observe generation 4",
                          generation=4, observed=3)


if __name__ == "__main__":
    unittest.main(verbosity=1)
