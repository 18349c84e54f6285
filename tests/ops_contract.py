"""Helpers of the deploy-file tests: the metric contract and the names PromQL uses.

The contract is the tables of docs/metrics.md (one row per metric: name, type, labels).
The PromQL scanning is deliberately lexical: it finds every ``ordercache_*`` series name,
every ``ordercache:*`` recording rule and every label matcher, which is what a typo or a
renamed metric breaks. No YAML parser is needed (PyYAML is not a dev dependency).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Series Prometheus itself provides.
BUILTIN_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
#: Labels every scraped series (or every histogram bucket) has besides the contract's.
TARGET_LABELS = frozenset({"job", "instance"})

_ROW = re.compile(
    r"^\|\s*`(?P<name>ordercache_[a-z0-9_]+)`\s*\|\s*(?P<kind>counter|gauge|histogram)\s*"
    r"\|(?P<labels>[^|]*)\|(?P<meaning>.*)\|\s*$"
)
_METRIC = re.compile(r"(?<![\w:])ordercache_[a-z0-9_]+")
_RECORDING = re.compile(r"(?<![\w:])ordercache:[a-z0-9_:]+")
_SELECTOR = re.compile(r"(?<![\w:])(?P<name>[a-zA-Z_][\w:]*)\s*\{(?P<body>[^}]*)\}")
_MATCHER = re.compile(r"(?P<label>[a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\((?P<labels>[^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_EXPR_KEY = re.compile(r"^(?P<indent>\s*)(?:- )?expr:\s*(?P<rest>.*?)\s*$")
_RULE_HEAD = re.compile(r"^\s*- (?P<kind>record|alert):\s*(?P<name>[\w:]+)\s*$")


@dataclass(frozen=True)
class MetricSpec:
    """One row of the contract."""

    name: str
    kind: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Contract:
    """The metric contract of docs/metrics.md."""

    metrics: dict[str, MetricSpec]

    def resolve(self, series: str) -> MetricSpec | None:
        """The contract metric a scraped series name belongs to, or None."""
        if series in self.metrics:
            return self.metrics[series]
        for suffix in ("_bucket", "_sum", "_count", "_created"):
            if not series.endswith(suffix):
                continue
            base = series.removesuffix(suffix)
            spec = self.metrics.get(base)
            if spec is not None and (spec.kind == "histogram"):
                return spec
            if suffix == "_created":
                spec = self.metrics.get(base + "_total")
                if spec is not None and spec.kind == "counter":
                    return spec
        return None

    def labels_of(self, series: str) -> frozenset[str] | None:
        """Labels a selector on ``series`` may match (contract + target labels + le)."""
        spec = self.resolve(series)
        if spec is None:
            return None
        extra = {"le"} if series.endswith("_bucket") else set()
        return spec.labels | TARGET_LABELS | extra


def load_contract(path: Path) -> Contract:
    """Parse the metric tables of docs/metrics.md."""
    metrics: dict[str, MetricSpec] = {}
    for line in path.read_text().splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        cell = re.sub(r"\([^)]*\)", "", m["labels"])
        labels = frozenset(re.findall(r"`(\w+)`", cell))
        name = m["name"]
        if name in metrics:
            raise ValueError(f"{name} listed twice in {path}")
        metrics[name] = MetricSpec(name, m["kind"], labels)
    return Contract(metrics)


def strip_strings(text: str) -> str:
    """``text`` with the contents of double-quoted strings removed."""
    return _STRING.sub('""', text)


def strip_comments(text: str) -> str:
    """``text`` without its full-line ``#`` comments (YAML and redis.conf style)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def metric_tokens(text: str) -> set[str]:
    """Every ``ordercache_*`` name in ``text``."""
    return set(_METRIC.findall(text))


def recording_tokens(text: str) -> set[str]:
    """Every ``ordercache:*`` recording-rule name in ``text``."""
    return set(_RECORDING.findall(text))


def label_matchers(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, matched label names) of every ``name{...}`` selector in ``expr``."""
    out: list[tuple[str, set[str]]] = []
    for m in _SELECTOR.finditer(strip_strings(expr)):
        out.append((m["name"], set(_MATCHER.findall(m["body"]))))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names of every ``by (...)`` / ``without (...)`` clause in ``expr``."""
    out: set[str] = set()
    for m in _GROUPING.finditer(strip_strings(expr)):
        out |= {label.strip() for label in m["labels"].split(",") if label.strip()}
    return out


@dataclass(frozen=True)
class Rule:
    """One rule of a rule file: ``kind`` is "record" or "alert"."""

    kind: str
    name: str
    expr: str


def parse_rules(text: str) -> list[Rule]:
    """The rules of a rule file written as ours are (``expr`` plain, quoted or a block)."""
    lines = text.splitlines()
    rules: list[Rule] = []
    current: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        head = _RULE_HEAD.match(line)
        if head is not None:
            current = (head["kind"], head["name"])
            continue
        m = _EXPR_KEY.match(line)
        if m is None:
            continue
        if current is None:
            raise ValueError(f"expr without a record/alert before it: {line!r}")
        rest = m["rest"]
        if rest in {"|", "|-", ">", ">-"}:
            indent = len(m["indent"]) + 2
            block: list[str] = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent
            ):
                block.append(lines[i].strip())
                i += 1
            expr = "\n".join(block).strip()
        elif rest[:1] in {"'", '"'}:
            expr = rest[1:-1]
        else:
            expr = rest
        rules.append(Rule(current[0], current[1], expr))
        current = None
    return rules
