"""The chart's Grafana dashboard: every panel's query parses (promtool) and reads only series the
operator and the agent really export; the README documents every series they export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tests.chart.helm import CHART
from tests.chart.promql import (
    DASHBOARD,
    SCRAPE_SERIES,
    exported_series,
    metric_names,
    promtool,
    rule_file,
    unknown_names,
)

#: what Grafana puts in place of the dashboard's variables before it queries
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$node": ".*"}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # rows may hold panels
    return found


def panel_queries() -> dict[str, str]:
    """Every query of every panel, keyed "<panel title>/<refId>", variables substituted."""
    queries = {}
    for panel in panels(json.loads(DASHBOARD.read_text())):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries[f"{panel['title']}/{target['refId']}"] = expr
    return queries


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_series("operator") | exported_series("agent")


def test_every_panel_has_a_query_and_the_issue_s_panels_are_there() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    shown = [p for p in panels(dashboard) if p["type"] != "row"]
    assert all(p.get("targets") for p in shown), [p["title"] for p in shown
                                                  if not p.get("targets")]
    names = set().union(*(metric_names(q) for q in panel_queries().values()))
    # per-node pool size, used, free and cooling; subnet free space; NIC writes and Azure
    # errors; CNI ADD/DEL latency histograms; throttling
    for needed in ("azure_cni_operator_pool_addresses", "azure_cni_operator_pool_used_addresses",
                   "azure_cni_agent_pool_addresses", "azure_cni_operator_subnet_free_addresses",
                   "azure_cni_operator_nic_write_duration_seconds_count",
                   "azure_cni_operator_azure_errors_total",
                   "azure_cni_cni_request_duration_seconds_bucket",
                   "azure_cni_azure_api_calls_total",
                   "azure_cni_azure_api_rate_limit_duration_seconds_bucket"):
        assert needed in names, f"no panel shows {needed}"
    heatmaps = [p for p in shown if p["type"] == "heatmap"]
    assert {p["title"] for p in heatmaps} == {"ADD latency", "DEL latency"}
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])


def test_every_panel_query_parses(tmp_path: Path) -> None:
    queries = panel_queries()
    records = {f"panel_{i}": expr for i, expr in enumerate(queries.values())}
    result = promtool("check", "rules", rule_file("dashboard", records, tmp_path / "p.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout


def test_a_query_that_does_not_parse_fails_the_check(tmp_path: Path) -> None:
    broken = {"panel_0": "sum by (le (rate(azure_cni_cni_requests_total[5m]))"}
    result = promtool("check", "rules", rule_file("dashboard", broken, tmp_path / "p.yaml"))
    assert result.returncode != 0


def test_panels_read_only_series_the_code_exports(exported: set[str]) -> None:
    unknown = unknown_names(panel_queries().values(), exported | SCRAPE_SERIES)
    assert not unknown, f"panels query series nothing exports: {unknown}"
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        if variable["type"] == "query":
            (metric,) = re.findall(r"label_values\((\w+),", variable["definition"])
            assert metric in exported, variable["name"]


def test_the_name_check_catches_a_renamed_series(exported: set[str]) -> None:
    """The old name of the agent's pool gauge is not exported any more: a panel on it fails."""
    assert unknown_names(['azure_cni_pool_addresses{state="available"}'], exported) == {
        'azure_cni_pool_addresses{state="available"}': {"azure_cni_pool_addresses"}}


def test_the_readme_documents_every_series_azure_cni_exports(exported: set[str]) -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `(azure_cni_\w+)` \|", readme, re.MULTILINE))
    families = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in exported
                if name.startswith("azure_cni_") and not name.endswith("_created")}
    assert families == documented, (
        f"undocumented: {sorted(families - documented)}; "
        f"documented but not exported: {sorted(documented - families)}")
