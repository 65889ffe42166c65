"""The chart's Grafana dashboard (charts/certrotor/dashboards/certrotor.json) queries only metrics
certrotor emits, as docs/metrics.md lists them, and has a panel for each thing operators watch.

Reads only files (no helm, no Grafana). Run: python tests/packaging/test_dashboard.py
"""

import copy
import json
import pathlib
import re
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "certrotor" / "dashboards" / "certrotor.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\bcertrotor_[A-Za-z0-9_:]*")
# A table row of docs/metrics.md: | `name` | type | labels | meaning |
TABLE_ROW = re.compile(r"^\|\s*`([A-Za-z_:][A-Za-z0-9_:]*)`\s*\|\s*([a-z]+)\s*\|")

# Metrics the dashboard must chart, each in at least one panel.
REQUIRED = (
    "certrotor_certificate_expiry_timestamp_seconds",
    "certrotor_certificate_renewal_timestamp_seconds",
    "certrotor_tenant_calls_total",
    "certrotor_tenant_call_duration_seconds",
    "certrotor_deviceid_refresh_budget_remaining",
    "certrotor_resource_condition",
    "certrotor_reconcile_errors_total",
    "certrotor_reconcile_duration_seconds",
    "certrotor_reconcile_total",
)


def documented_metrics(text=None):
    """{name: type} from the table in docs/metrics.md."""
    text = METRICS_DOC.read_text() if text is None else text
    return {m.group(1): m.group(2) for m in map(TABLE_ROW.match, text.splitlines()) if m}


def panels(dashboard):
    """Every panel, rows' nested panels included (a collapsed row keeps its panels inside)."""
    def walk(items):
        for p in items or []:
            yield p
            yield from walk(p.get("panels"))
    return list(walk(dashboard.get("panels")))


def panel_exprs(panel):
    return [t["expr"] for t in panel.get("targets") or [] if t.get("expr")]


def variable_queries(dashboard):
    """PromQL of the query variables (a string, or an object with a query field)."""
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        out.append(q.get("query", "") if isinstance(q, dict) else q or "")
        if v.get("definition"):
            out.append(v["definition"])
    return out


def all_exprs(dashboard):
    return [e for p in panels(dashboard) for e in panel_exprs(p)] + variable_queries(dashboard)


def base_metric(name, documented):
    """The documented metric a series name belongs to: a histogram's _bucket/_sum/_count series
    belong to the histogram; any other name stands for itself."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and documented.get(base) == "histogram":
            return base
    return name


def unknown_metrics(exprs, documented):
    """Problems: names in exprs that certrotor does not emit. A histogram is only exposed as its
    _bucket, _sum and _count series, so its bare name is an error too."""
    problems = []
    for expr in exprs:
        for name in METRIC_NAME.findall(expr):
            base = base_metric(name, documented)
            if base not in documented:
                problems.append(f"{name} is not in docs/metrics.md: {expr}")
            elif documented[base] == "histogram" and base == name:
                problems.append(f"{name} is a histogram, exposed only as {name}_bucket/_sum/_count: {expr}")
    return problems


def mentions(panel, metric):
    return any(re.search(rf"\b{re.escape(metric)}(_bucket|_sum|_count)?\b", e) for e in panel_exprs(panel))


class DocumentedMetricsTest(unittest.TestCase):
    def test_the_table_is_parsed(self):
        documented = documented_metrics()
        self.assertGreaterEqual(len(documented), 9, documented)
        self.assertEqual(documented["certrotor_reconcile_duration_seconds"], "histogram")
        self.assertEqual(documented["certrotor_tenant_calls_total"], "counter")
        self.assertEqual(documented["certrotor_certificate_expiry_timestamp_seconds"], "gauge")
        self.assertTrue(set(documented.values()) <= {"gauge", "counter", "histogram"}, documented)
        for metric in REQUIRED:
            self.assertIn(metric, documented)


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.text = DASHBOARD.read_text()
        cls.dashboard = json.loads(cls.text)
        cls.documented = documented_metrics()

    def test_identity(self):
        self.assertEqual(self.dashboard["uid"], "certrotor")
        self.assertEqual(self.dashboard["title"], "certrotor")
        self.assertIn("certrotor", self.dashboard["tags"])
        self.assertIsInstance(self.dashboard["schemaVersion"], int)

    def test_variables(self):
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        namespace = variables["namespace"]
        self.assertEqual(namespace["type"], "query")
        self.assertTrue(namespace["multi"])
        self.assertIn("label_values(certrotor_resource_condition, namespace)", variable_queries(self.dashboard))

    def test_every_query_uses_the_datasource_variable(self):
        for p in panels(self.dashboard):
            if p["type"] == "row":
                continue
            self.assertEqual(p["datasource"]["uid"], "${datasource}", p["title"])
            for t in p["targets"]:
                self.assertEqual(t["datasource"]["uid"], "${datasource}", p["title"])

    def test_panel_ids_are_unique(self):
        ids = [p["id"] for p in panels(self.dashboard)]
        self.assertEqual(len(ids), len(set(ids)), ids)

    def test_queries_only_emitted_metrics(self):
        exprs = all_exprs(self.dashboard)
        self.assertTrue(exprs)
        self.assertEqual(unknown_metrics(exprs, self.documented), [])

    def test_every_metric_has_a_panel(self):
        ps = panels(self.dashboard)
        for metric in REQUIRED:
            self.assertTrue([p for p in ps if mentions(p, metric)], f"no panel queries {metric}")

    def test_not_ready_and_stalled_panels(self):
        exprs = [e for p in panels(self.dashboard) for e in panel_exprs(p)]
        self.assertTrue(any(re.search(r'condition="Ready".*==\s*0', e) for e in exprs))
        self.assertTrue(any(re.search(r'condition="Stalled".*==\s*1', e) for e in exprs))

    def test_histograms_are_read_as_quantiles(self):
        exprs = [e for p in panels(self.dashboard) for e in panel_exprs(p)]
        for metric in ("certrotor_tenant_call_duration_seconds", "certrotor_reconcile_duration_seconds"):
            self.assertTrue(any("histogram_quantile(0.95" in e and f"{metric}_bucket" in e and "le" in e
                                for e in exprs), metric)


class CheckNoticesWrongNamesTest(unittest.TestCase):
    """The check must fail on names certrotor does not emit, wherever they sit."""

    @classmethod
    def setUpClass(cls):
        cls.dashboard = json.loads(DASHBOARD.read_text())
        cls.documented = documented_metrics()

    def problems(self, expr):
        return unknown_metrics([expr], self.documented)

    def test_an_unknown_name(self):
        problems = self.problems("sum(rate(certrotor_nonexistent_total[5m]))")
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("certrotor_nonexistent_total is not in docs/metrics.md", problems[0])

    def test_a_counter_without_total(self):
        self.assertTrue(self.problems("rate(certrotor_tenant_calls[5m])"))

    def test_histogram_suffix_on_a_counter(self):
        self.assertTrue(self.problems("rate(certrotor_reconcile_total_count[5m])"))

    def test_a_bare_histogram_name(self):
        self.assertTrue(self.problems("rate(certrotor_reconcile_duration_seconds[5m])"))

    def test_histogram_series_pass(self):
        for suffix in HISTOGRAM_SUFFIXES:
            self.assertEqual(self.problems(f"rate(certrotor_tenant_call_duration_seconds{suffix}[5m])"), [])

    def test_a_wrong_name_in_a_collapsed_row(self):
        dashboard = copy.deepcopy(self.dashboard)
        dashboard["panels"].append({
            "type": "row", "title": "hidden", "id": 999, "collapsed": True,
            "panels": [{"type": "timeseries", "id": 1000, "title": "bad",
                        "targets": [{"refId": "A", "expr": "certrotor_nonexistent_total"}]}]})
        problems = unknown_metrics(all_exprs(dashboard), self.documented)
        self.assertTrue(any("certrotor_nonexistent_total" in p for p in problems), problems)

    def test_a_wrong_name_in_a_variable(self):
        dashboard = copy.deepcopy(self.dashboard)
        dashboard["templating"]["list"].append(
            {"name": "x", "type": "query", "query": "label_values(certrotor_nonexistent_total, name)"})
        self.assertTrue(unknown_metrics(all_exprs(dashboard), self.documented))

    def test_a_metric_dropped_from_the_docs(self):
        documented = dict(self.documented)
        del documented["certrotor_deviceid_refresh_budget_remaining"]
        problems = unknown_metrics(all_exprs(self.dashboard), documented)
        self.assertTrue(any("certrotor_deviceid_refresh_budget_remaining" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main(verbosity=1)
