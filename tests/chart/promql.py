"""PromQL as the chart ships it: the metric names an expression reads, the series names the
operator and the agent really export, and promtool (the pinned one) to check both."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from tests.chart.helm import CHART

from azure_cni_sim.tools import find_tool

MONITORING = CHART / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
#: series Prometheus itself adds to every target
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan",
                       "start", "end", "by", "without", "on", "ignoring", "group_left",
                       "group_right"})


def metric_names(expr: str) -> set[str]:
    """The metric names a (syntactically valid) PromQL expression selects.

    Label matchers, range and subquery brackets and grouping label lists are blanked out;
    what remains that is not a function, an aggregation or a keyword is a metric name.
    """
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end():].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation, or part of the grammar
        names.add(word)
    return names


# Each process's registry, collected in a process of its own so nothing else the test session
# imported is counted: the operator's default registry as its running process leaves it, and the
# agent's own registry. A family's series names follow from its type (a counter named x is
# exposed as x_total and x_created; a histogram as x_bucket, x_count, x_sum, x_created).
_COLLECT = """
import json, sys
from prometheus_client import REGISTRY
if sys.argv[1] == "operator":
    # what azure-cni-operator imports to run (after parsing its arguments) registers
    # everything the operator exports
    import azure_cni.operator.runtime  # noqa: F401
    registry = REGISTRY
else:
    from azure_cni.agent.metrics import AgentMetrics
    registry = AgentMetrics().registry
print(json.dumps([[m.name, m.type] for m in registry.collect()]))
"""
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "unknown": ("",)}


def exported_series(process: str) -> set[str]:
    """Series names ``process`` ("operator" or "agent") exposes on /metrics."""
    out = subprocess.run([sys.executable, "-c", _COLLECT, process], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return {name + suffix for name, kind in json.loads(out)
            for suffix in _SUFFIXES.get(kind, ("",))}


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(find_tool("promtool")), *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=120, cwd=cwd)


def rule_file(name: str, expressions: Mapping[str, str], path: Path) -> Path:
    """A rules file recording each expression (so ``promtool check rules`` parses them)."""
    path.write_text(yaml.safe_dump({"groups": [{"name": name, "rules": [
        {"record": record, "expr": expr} for record, expr in expressions.items()]}]}))
    return path


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def unknown_names(expressions: Iterable[str], known: set[str]) -> dict[str, set[str]]:
    """For each expression naming a metric outside ``known``: those names."""
    found = {expr: metric_names(expr) - known for expr in expressions}
    return {expr: names for expr, names in found.items() if names}
