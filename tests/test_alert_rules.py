"""Alert and recording rules: promtool checks and unit tests, and the metric contract.

``promtool`` comes with Debian's ``prometheus`` package (scripts/bootstrap installs it).
The contract (metric names, types, labels) is the tables of docs/metrics.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops_contract import (
    BUILTIN_SERIES,
    TARGET_LABELS,
    Contract,
    Rule,
    grouping_labels,
    label_matchers,
    load_contract,
    metric_tokens,
    parse_rules,
    recording_tokens,
    strip_comments,
)

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH: install Debian's 'prometheus' package (scripts/bootstrap)",
)

#: Every alert the rules must define (the brief's list plus absent/health).
EXPECTED_ALERTS = {
    "OrdercacheCacheHitRatioLow",
    "OrdercacheCacheLatencyHigh",
    "OrdercacheCircuitBreakerOpen",
    "OrdercacheRedisDown",
    "OrdercacheRedisMemoryNearMax",
    "OrdercacheRedisEvicting",
    "OrdercacheInvalidationLagHigh",
    "OrdercacheConsumerLagHigh",
    "OrdercacheConsumerLagGrowing",
    "OrdercacheDlqMessages",
    "OrdercacheStreamPendingHigh",
    "OrdercacheStreamPendingStuck",
    "OrdercacheStreamDeadLetters",
    "OrdercacheWorkerDown",
    "OrdercacheWorkerLost",
    "OrdercacheWorkerAbsent",
    "OrdercacheRedisClientsNearMax",
    "OrdercacheRedisRejectingConnections",
    "OrdercacheRedisReplicationBroken",
    "OrdercacheRedisReplicaLost",
    "OrdercacheRedisReplicationLagHigh",
    "OrdercacheRedisPersistenceFailing",
    "OrdercacheHealthDegraded",
    "OrdercacheInvalidationStalled",
    "OrdercacheBrokerUnreachable",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(ROOT / "docs" / "metrics.md")


@pytest.fixture(scope="module")
def alerts_text() -> str:
    """The rule file without comments (comments may mention names loosely)."""
    return strip_comments(ALERTS.read_text())


@pytest.fixture(scope="module")
def rules(alerts_text: str) -> list[Rule]:
    return parse_rules(alerts_text)


def _alert_names(rules: list[Rule]) -> list[str]:
    return [r.name for r in rules if r.kind == "alert"]


def _recordings(rules: list[Rule]) -> dict[str, str]:
    return {r.name: r.expr for r in rules if r.kind == "record"}


def _labels_in(expr: str, contract: Contract, recordings: dict[str, str]) -> set[str]:
    """Labels the series of ``expr`` can carry (recordings: those of their own inputs)."""
    out: set[str] = set(TARGET_LABELS) | {"le"}
    for name in metric_tokens(expr):
        out |= contract.labels_of(name) or set()
    for name in recording_tokens(expr):
        if name in recordings:
            out |= _labels_in(recordings[name], contract, recordings)
    return out


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


# --------------------------------------------------------------------------- promtool
@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A lowered threshold must break the hit-ratio test: the unit tests see the rules."""
    mutated = ALERTS.read_text().replace(
        "record: ordercache:threshold:cache_hit_ratio_min\n        expr: vector(0.7)",
        "record: ordercache:threshold:cache_hit_ratio_min\n        expr: vector(0.2)",
    )
    assert mutated != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(mutated)
    (tmp_path / "alerts_test.yml").write_text(ALERTS_TEST.read_text())
    result = _promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "OrdercacheCacheHitRatioLow" in result.stdout + result.stderr


# --------------------------------------------------------------------------- contract
def test_contract_table_parses(contract: Contract) -> None:
    assert len(contract.metrics) == 39
    assert contract.metrics["ordercache_local_truncations_total"].kind == "counter"
    assert contract.metrics["ordercache_cache_requests_total"].labels == {"view", "result"}
    assert contract.metrics["ordercache_cache_operation_duration_seconds"].kind == "histogram"
    assert contract.metrics["ordercache_health_status"].labels == set()
    assert contract.resolve("ordercache_invalidation_lag_seconds_bucket") is not None
    assert contract.resolve("ordercache_events_created") is not None
    assert contract.resolve("ordercache_health_status_bucket") is None
    assert contract.resolve("ordercache_cache_request_total") is None


def test_rule_file_parses(rules: list[Rule], alerts_text: str) -> None:
    assert len(rules) == alerts_text.count("- record:") + alerts_text.count("- alert:")
    assert all(r.expr for r in rules)


def test_rules_use_only_contract_metrics(contract: Contract, alerts_text: str) -> None:
    # The whole file: expressions and the annotations that name metrics.
    used = metric_tokens(alerts_text)
    assert used, "no metric found: the scanner is broken"
    unknown = {name for name in used if contract.resolve(name) is None}
    assert not unknown, f"not in docs/metrics.md: {sorted(unknown)}"


def test_rules_use_only_defined_recordings(rules: list[Rule], alerts_text: str) -> None:
    recorded = _recordings(rules)
    used: set[str] = set()
    for rule in rules:
        used |= recording_tokens(rule.expr)
    assert used - set(recorded) == set()
    # Annotations may only name recordings that exist, too.
    assert recording_tokens(alerts_text) - set(recorded) == set()
    unused = set(recorded) - used
    assert not unused, f"recorded but never read by a rule: {sorted(unused)}"


def test_rules_label_matchers_exist(contract: Contract, rules: list[Rule]) -> None:
    seen = 0
    for rule in rules:
        for metric, labels in label_matchers(rule.expr):
            if metric in BUILTIN_SERIES:
                continue
            allowed = contract.labels_of(metric)
            if allowed is None:
                assert metric in _recordings(rules), f"{rule.name}: unknown series {metric}"
                continue
            seen += 1
            assert labels <= allowed, f"{rule.name}: {metric} has no {sorted(labels - allowed)}"
    assert seen > 0


def test_rules_group_by_existing_labels(contract: Contract, rules: list[Rule]) -> None:
    recordings = _recordings(rules)
    for rule in rules:
        allowed = _labels_in(rule.expr, contract, recordings)
        extra = grouping_labels(rule.expr) - allowed
        assert not extra, f"{rule.name} groups by unknown labels {sorted(extra)}"


def test_every_expected_alert_defined(rules: list[Rule]) -> None:
    names = _alert_names(rules)
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) == EXPECTED_ALERTS


def test_every_alert_has_severity_and_annotations(alerts_text: str) -> None:
    blocks = alerts_text.split("- alert: ")[1:]
    assert len(blocks) == len(EXPECTED_ALERTS)
    for block in blocks:
        name = block.split()[0]
        assert re.search(r"severity: (critical|warning)\n", block), name
        for key in ("summary:", "description:", "runbook_url:"):
            assert key in block, f"{name} lacks {key}"


def test_every_alert_unit_tested() -> None:
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERTS_TEST.read_text()))
    assert tested >= EXPECTED_ALERTS


def test_runbook_anchor_per_alert(alerts_text: str) -> None:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(h) for h in headings}
    urls = re.findall(r'runbook_url:\s*"docs/runbook\.md#([\w-]+)"', alerts_text)
    assert len(urls) == len(EXPECTED_ALERTS)
    for name in EXPECTED_ALERTS:
        assert name.lower() in urls, f"{name} has no runbook_url to its own anchor"
    missing = set(urls) - anchors
    assert not missing, f"docs/runbook.md lacks sections {sorted(missing)}"
    assert "thresholds" in anchors


def test_runbook_documents_every_threshold(rules: list[Rule]) -> None:
    runbook = RUNBOOK.read_text()
    for name in _recordings(rules):
        if name.startswith("ordercache:threshold:"):
            assert name in runbook, f"{name} is not documented in docs/runbook.md"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("OrdercacheRedisDown", "ordercacheredisdown"),
        ("Thresholds", "thresholds"),
        ("Redis: memory and eviction", "redis-memory-and-eviction"),
        ("What to check (commands)", "what-to-check-commands"),
    ],
)
def test_github_anchor(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


def test_rule_scanner_agrees_with_yaml() -> None:
    """The lexical rule scanner reads the same expressions as a YAML parser (if present)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (not a dev dependency)")
    doc = yaml.safe_load(ALERTS.read_text())

    def norm(expr: str) -> str:
        return " ".join(expr.split())

    expected = [
        ("record" if "record" in r else "alert", r.get("record") or r["alert"], norm(r["expr"]))
        for group in doc["groups"]
        for r in group["rules"]
    ]
    got = [(r.kind, r.name, norm(r.expr)) for r in parse_rules(ALERTS.read_text())]
    assert got == expected
    for group in doc["groups"]:
        for r in group["rules"]:
            if "alert" in r:
                assert r["labels"]["severity"] in {"critical", "warning"}
                assert set(r["annotations"]) == {"summary", "description", "runbook_url"}
