"""Check the deployment and monitoring files against the code and against each other.

- Every metric named in the alert rules and the Grafana dashboard exists in the catalogue of
  app/observability/metrics.py (read statically with `ast`: Counter -> `_total`, Histogram ->
  `_bucket`/`_sum`/`_count`, Info -> `_info`), and every label matcher on it names one of its
  labels (or a target label such as job or instance).
- Every PromQL expression parses: the rules with `promtool check rules`; the dashboard's queries,
  with Grafana variables substituted, written into a temporary rules file for promtool.
- Every alert has a unit test where it fires and one where it stays silent (tests.yml).
- deploy/kubernetes/prometheusrule.yaml holds exactly the groups of deploy/prometheus/alerts.yml
  (`--write-prometheusrule` regenerates it).
- The Kubernetes base, Dockerfile and docker-compose.yml agree with each other and with the
  settings in app/config.py (selectors, named ports, drain grace period, non-root user, only
  AUDIOHOOK_* variables that exist, security context): deploy/check_manifests.py.

Usage: python deploy/check_deploy.py [--promtool PATH] [--write-prometheusrule]
Needs Python >= 3.11 and PyYAML (a dependency of uvicorn[standard] and kubernetes-validate).
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_manifests import check_manifests

ROOT = Path(__file__).resolve().parent.parent
METRICS_PY = ROOT / "app" / "observability" / "metrics.py"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "tests.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "audiohook-gateway.json"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"

METRIC_KINDS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
# Labels that Prometheus or the Operator add to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Series that Prometheus itself produces for each target.
SCRAPE_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Stand-ins for Grafana's built-in variables when a dashboard query is handed to promtool.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}

STRING_RE = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
SELECTOR_RE = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
IDENT_RE = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)")
MATCHER_LABEL_RE = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
GRAFANA_VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES_RE = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)


@dataclass
class Report:
    """Failures and notes, grouped by check, printed at the end."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, check: str, message: str) -> None:
        self.failures.append(f"[{check}] {message}")

    def note(self, check: str, message: str) -> None:
        self.notes.append(f"[{check}] {message}")


@dataclass(frozen=True)
class Metric:
    name: str  # exposed series name
    family: str  # full name as declared (namespace_subsystem_name)
    kind: str
    labels: frozenset[str]


# --- metric catalogue -------------------------------------------------------------------------


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _argument(node: ast.Call, position: int | None, keyword: str) -> ast.expr | None:
    """A call's argument given by keyword, or at `position` (None: keyword-only)."""
    for kw in node.keywords:
        if kw.arg == keyword:
            return kw.value
    if position is not None and len(node.args) > position:
        return node.args[position]
    return None


def _string(node: ast.expr | None, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _declared_metric(
    node: ast.Call, constants: dict[str, str], report: Report
) -> tuple[str, str, set[str]] | None:
    """(kind, full name, label names) of one metric constructor call."""
    kind = _callee(node) or ""
    name = _string(_argument(node, 0, "name"), constants)
    if name is None:
        report.fail("catalogue", f"line {node.lineno}: {kind} name is not a string constant")
        return None
    namespace = _string(_argument(node, None, "namespace"), constants)
    subsystem = _string(_argument(node, None, "subsystem"), constants)
    full = "_".join(part for part in (namespace, subsystem, name) if part)
    labels: set[str] = set()
    label_node = _argument(node, 2, "labelnames")
    if isinstance(label_node, ast.List | ast.Tuple):
        for element in label_node.elts:
            label = _string(element, constants)
            if label is None:
                report.fail("catalogue", f"line {node.lineno}: {full} has a non-constant label")
            else:
                labels.add(label)
    elif label_node is not None:
        report.fail("catalogue", f"line {node.lineno}: {full} labels are not a literal list")
    return kind, full, labels


def _series(kind: str, full: str, labels: set[str]) -> dict[str, set[str]]:
    """Exposed series names of one metric family, with the labels each carries."""
    if kind == "Counter":
        base = full.removesuffix("_total")
        return {f"{base}_total": labels, f"{base}_created": labels}
    if kind == "Histogram":
        return {
            f"{full}_bucket": labels | {"le"},
            f"{full}_sum": labels,
            f"{full}_count": labels,
            f"{full}_created": labels,
        }
    if kind == "Summary":
        return {
            full: labels | {"quantile"},
            f"{full}_sum": labels,
            f"{full}_count": labels,
            f"{full}_created": labels,
        }
    if kind == "Info":
        return {f"{full}_info": labels}
    if kind == "Enum":
        return {full: labels | {full}}
    return {full: labels}


def load_catalogue(path: Path, report: Report) -> dict[str, Metric]:
    """Exposed series name -> Metric, for every metric constructed in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    constants: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value

    families: dict[int, tuple[str, str, set[str]]] = {}  # by id() of the constructor call
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and _callee(call) in METRIC_KINDS:
            declared = _declared_metric(call, constants, report)
            if declared:
                families[id(call)] = declared
    # Info labels are the keys given to `VARIABLE.info({...})`.
    variables = {
        target.id: families[id(node.value)]
        for node in tree.body
        if isinstance(node, ast.Assign) and id(node.value) in families
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for call in ast.walk(tree):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "info"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id in variables
            and call.args
            and isinstance(call.args[0], ast.Dict)
        ):
            for key in call.args[0].keys:
                label = _string(key, constants)
                if label:
                    variables[call.func.value.id][2].add(label)

    exposed: dict[str, Metric] = {}
    for kind, full, labels in families.values():
        for series, series_labels in _series(kind, full, labels).items():
            if series in exposed:
                report.fail("catalogue", f"{series} is declared twice")
            exposed[series] = Metric(series, full, kind, frozenset(series_labels))
    if not exposed:
        report.fail("catalogue", f"no metrics found in {path.relative_to(ROOT)}")
    return exposed


# --- PromQL references ------------------------------------------------------------------------


def check_expression(
    where: str, expr: str, catalogue: dict[str, Metric], report: Report, used: set[str]
) -> None:
    """Metric names and label matchers of one PromQL expression against the catalogue."""
    blanked = STRING_RE.sub('""', expr)
    for match in SELECTOR_RE.finditer(blanked):
        name = match.group(1)
        if not name.startswith("audiohook_") and name not in SCRAPE_METRICS:
            report.fail("metrics", f"{where}: unknown metric {name!r}")
    for match in IDENT_RE.finditer(blanked):
        name = match.group(1)
        if not name.startswith("audiohook_"):
            continue
        metric = catalogue.get(name)
        if metric is None:
            report.fail("metrics", f"{where}: {name} is not in app/observability/metrics.py")
            continue
        used.add(name)
        rest = blanked[match.end() :].lstrip()
        if rest.startswith("{"):
            matchers = rest[1 : rest.find("}")]
            for label in MATCHER_LABEL_RE.findall(matchers):
                if label not in metric.labels and label not in TARGET_LABELS:
                    report.fail(
                        "metrics",
                        f"{where}: {name} has no label {label!r} "
                        f"(labels: {', '.join(sorted(metric.labels)) or 'none'})",
                    )


def run_promtool_rules(promtool: str, groups: list[dict[str, Any]], label: str) -> str | None:
    """`promtool check rules` on `groups`; its output on failure, None on success."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{label}.rules.yml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
        # promtool is the operator's own binary (--promtool or PATH), not untrusted input.
        result = subprocess.run(  # noqa: S603
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        return (result.stdout + result.stderr).strip()
    return None


# --- alert rules ------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def check_alerts(
    catalogue: dict[str, Metric], promtool: str, report: Report, used: set[str]
) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(ALERTS)["groups"]
    alert_names = []
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            alert_names.append(name)
            check_expression(f"alerts.yml {name}", str(rule["expr"]), catalogue, report, used)
            if "alert" in rule:
                if "severity" not in rule.get("labels", {}):
                    report.fail("alerts", f"{name}: no severity label")
                if "summary" not in rule.get("annotations", {}):
                    report.fail("alerts", f"{name}: no summary annotation")
    output = run_promtool_rules(promtool, groups, "alerts")
    if output:
        report.fail("alerts", f"promtool check rules failed:\n{output}")

    # Every alert must be tested firing and silent.
    fires: set[str] = set()
    silent: set[str] = set()
    for test in load_yaml(ALERT_TESTS).get("tests", []):
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    for name in alert_names:
        if name not in fires:
            report.fail("alert tests", f"{name}: no test case where it fires")
        if name not in silent:
            report.fail("alert tests", f"{name}: no test case where it stays silent")
    return groups


def prometheus_rule_text(alerts_text: str) -> str:
    """deploy/kubernetes/prometheusrule.yaml generated from the text of alerts.yml."""
    body = alerts_text[alerts_text.index("groups:") :]
    indented = "".join(f"  {line}" if line.strip() else line for line in body.splitlines(True))
    return (
        "# GENERATED from deploy/prometheus/alerts.yml by\n"
        "#   python deploy/check_deploy.py --write-prometheusrule\n"
        "# Edit alerts.yml, not this file.\n"
        "# The Prometheus Operator's Prometheus selects rules by label: add the label your\n"
        "# installation expects (kube-prometheus-stack: `release: <name>`).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: audiohook-gateway\n"
        "  labels:\n"
        "    app.kubernetes.io/name: audiohook-gateway\n"
        "    app.kubernetes.io/component: gateway\n"
        "    app.kubernetes.io/part-of: audiohook\n"
        "spec:\n" + indented
    )


def check_prometheus_rule(groups: list[dict[str, Any]], promtool: str, report: Report) -> None:
    if not PROMETHEUS_RULE.exists():
        report.fail("PrometheusRule", "missing; run with --write-prometheusrule")
        return
    rule = load_yaml(PROMETHEUS_RULE)
    if rule.get("apiVersion") != "monitoring.coreos.com/v1" or rule.get("kind") != "PrometheusRule":
        report.fail(
            "PrometheusRule", "apiVersion/kind is not monitoring.coreos.com/v1 PrometheusRule"
        )
    if set(rule.get("spec", {})) != {"groups"}:
        report.fail("PrometheusRule", "spec must hold `groups` only")
    if rule.get("spec", {}).get("groups") != groups:
        report.fail(
            "PrometheusRule",
            "groups differ from deploy/prometheus/alerts.yml; "
            "run `python deploy/check_deploy.py --write-prometheusrule`",
        )
    output = run_promtool_rules(promtool, rule.get("spec", {}).get("groups", []), "prometheusrule")
    if output:
        report.fail("PrometheusRule", f"promtool check rules failed:\n{output}")


# --- Grafana dashboard ------------------------------------------------------------------------


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def substitute_variables(expr: str, values: dict[str, str]) -> tuple[str, set[str]]:
    """`expr` with Grafana variables replaced; also the names that have no value."""
    unknown: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in values:
            return values[name]
        unknown.add(name)
        return match.group(0)

    return GRAFANA_VAR_RE.sub(replace, expr), unknown


def check_dashboard(
    catalogue: dict[str, Metric], promtool: str, report: Report, used: set[str]
) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    if not dashboard.get("uid") or not dashboard.get("title"):
        report.fail("dashboard", "uid and title are required")
    values = dict(GRAFANA_BUILTINS)
    queries: list[tuple[str, str]] = []  # (where, expr)
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable.get("type") == "datasource":
            values[name] = "prometheus"
            continue
        current = variable.get("current", {}).get("value")
        if variable.get("includeAll") or variable.get("multi"):
            values[name] = variable.get("allValue") or ".*"
        else:
            values[name] = current if isinstance(current, str) and current else "x"
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and isinstance(query, str):
            found = LABEL_VALUES_RE.match(query)
            if found is None:
                report.fail("dashboard", f"variable {name}: expected label_values(selector, label)")
                continue
            selector, label = found.groups()
            queries.append((f"variable {name}", selector))
            metric = catalogue.get(selector.split("{")[0].strip())
            if metric and label not in metric.labels | TARGET_LABELS:
                report.fail("dashboard", f"variable {name}: {metric.name} has no label {label!r}")

    ids: set[object] = set()
    for panel in _panels(dashboard.get("panels", [])):
        title = panel.get("title", "?")
        if panel.get("id") is None or panel.get("id") in ids:
            report.fail("dashboard", f"panel {title!r}: missing or duplicate id")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            report.fail("dashboard", f"panel {title!r}: no gridPos")
        if panel.get("type") != "row" and not panel.get("targets"):
            report.fail("dashboard", f"panel {title!r}: no queries")
        for target in panel.get("targets", []):
            queries.append((f"panel {title!r} {target.get('refId', '?')}", target["expr"]))

    rules = []
    for index, (where, expr) in enumerate(queries):
        concrete, unknown = substitute_variables(expr, values)
        if unknown:
            report.fail("dashboard", f"{where}: undefined variable(s) {sorted(unknown)}")
            continue
        check_expression(f"dashboard {where}", concrete, catalogue, report, used)
        rules.append({"record": f"dashboard:query_{index}", "expr": concrete})
    output = run_promtool_rules(promtool, [{"name": "dashboard", "rules": rules}], "dashboard")
    if output:
        report.fail("dashboard", f"promtool could not parse a dashboard query:\n{output}")
    report.note("dashboard", f"{len(queries)} queries in {len(ids)} panels checked")


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promtool", default=shutil.which("promtool"), help="path of promtool")
    parser.add_argument(
        "--write-prometheusrule", action="store_true", help="regenerate prometheusrule.yaml first"
    )
    args = parser.parse_args()
    if not args.promtool:
        print("check_deploy: promtool not found (Debian package `prometheus`)", file=sys.stderr)
        return 1
    if args.write_prometheusrule:
        PROMETHEUS_RULE.write_text(
            prometheus_rule_text(ALERTS.read_text(encoding="utf-8")), encoding="utf-8"
        )
        print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")

    report = Report()
    catalogue = load_catalogue(METRICS_PY, report)
    report.note("catalogue", f"{len(catalogue)} series names from {METRICS_PY.relative_to(ROOT)}")
    used: set[str] = set()
    groups = check_alerts(catalogue, args.promtool, report, used)
    check_prometheus_rule(groups, args.promtool, report)
    check_dashboard(catalogue, args.promtool, report, used)
    objects = check_manifests(report.fail)
    report.note("kubernetes", f"{len(objects)} objects rendered: {', '.join(objects)}")

    unused = sorted({m.family for m in catalogue.values()} - {catalogue[n].family for n in used})
    if unused:
        report.note("coverage", f"not on the dashboard or in an alert: {', '.join(unused)}")

    for line in report.notes:
        print(f"note  {line}")
    for line in report.failures:
        print(f"FAIL  {line}")
    print(f"check_deploy: {len(report.failures)} problem(s)")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
