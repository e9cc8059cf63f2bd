"""The chart's alerts: promtool checks and unit-tests monitoring/alerts.yaml, every alert has
series that fire it and series that must not, and the checker fails when an alert stays
silent. Each alert's runbook is in the chart's README."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.helm import CHART, ROOT
from tests.chart.promql import (
    ALERTS,
    SCRAPE_SERIES,
    alert_rules,
    exported_series,
    promtool,
    unknown_names,
)

UNIT_TESTS = ROOT / "tests" / "chart" / "monitoring" / "alerts-test.yaml"
ALERT_NAMES = [rule["alert"] for rule in alert_rules()]


def alert_checks(tests: dict[str, Any]) -> list[dict[str, Any]]:
    return [check for case in tests["tests"] for check in case.get("alert_rule_test", [])]


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issue_s_alerts_are_all_there() -> None:
    assert sorted(ALERT_NAMES) == sorted([
        "AzureCNIOperatorDown", "AzureCNIOperatorNoLeader", "AzureCNIAgentNotReady",
        "AzureCNIPoolExhausted", "AzureCNIPoolNotGrowing", "AzureCNISubnetNearlyFull",
        "AzureCNISubnetFull",
        "AzureCNIAzureThrottled", "AzureCNIAzureAuthFailing", "AzureCNIAddFailures",
        "AzureCNIReleaseStuck"])
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_every_alert_has_series_that_fire_it_and_series_that_must_not(alert: str) -> None:
    checks = [c for c in alert_checks(yaml.safe_load(UNIT_TESTS.read_text()))
              if c["alertname"] == alert]
    assert any(c.get("exp_alerts") for c in checks), f"no unit test makes {alert} fire"
    assert any(not c.get("exp_alerts") for c in checks), \
        f"no unit test checks that {alert} stays silent"


def copy_of_the_tests(tmp_path: Path, rules: dict[str, Any] | None = None,
                      tests: dict[str, Any] | None = None) -> Path:
    """The unit tests (or ``tests``) against the shipped rules (or ``rules``), in tmp_path."""
    rules_path = tmp_path / "alerts.yaml"
    rules_path.write_text(yaml.safe_dump(rules) if rules is not None else ALERTS.read_text())
    document = tests if tests is not None else yaml.safe_load(UNIT_TESTS.read_text())
    document["rule_files"] = [str(rules_path)]
    path = tmp_path / "alerts-test.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_an_alert_that_never_fires_fails_the_unit_tests(alert: str, tmp_path: Path) -> None:
    """With the alert's expression made impossible, the series that should fire it do not,
    and promtool must say so (the checker can fail, for every alert)."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(1) > 2"
    result = promtool("test", "rules", copy_of_the_tests(tmp_path, rules=rules))
    assert result.returncode != 0, result.stdout
    assert f"alertname: {alert}," in result.stdout + result.stderr


def test_series_that_stay_healthy_fail_a_test_that_expects_the_alert(tmp_path: Path) -> None:
    """The other way round: keep the rule, make the pool never run dry."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    (case,) = [c for c in tests["tests"] if c["name"].startswith("a pool runs dry")]
    for series in case["input_series"]:
        if 'node="vm0"' in series["series"]:
            series["values"] = "4x21"
    result = promtool("test", "rules", copy_of_the_tests(tmp_path, tests=tests))
    assert result.returncode != 0, result.stdout
    assert "alertname: AzureCNIPoolExhausted, time: 13m" in result.stdout + result.stderr


def test_alerts_read_only_series_the_code_exports() -> None:
    known = exported_series("operator") | exported_series("agent") | SCRAPE_SERIES
    assert not unknown_names((rule["expr"] for rule in alert_rules()), known)


def test_every_alert_has_a_runbook_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    runbooks = re.findall(r"^#### (AzureCNI\w+)\n(.*?)(?=^#{2,4} )", readme,
                          re.MULTILINE | re.DOTALL)
    assert sorted(name for name, _ in runbooks) == sorted(ALERT_NAMES)
    for name, text in runbooks:
        for part in ("**Means**", "**Look at**", "**Do**"):
            assert part in text, f"the runbook of {name} lacks {part}"
