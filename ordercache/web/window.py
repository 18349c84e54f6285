"""Recent-window arithmetic over Prometheus samples (pure; no I/O, injectable time).

Counters and histograms only ever grow, so "what happened in the last five
minutes" is the difference between now and a snapshot taken five minutes ago.
:class:`SampleWindow` keeps a small ring of snapshots; :func:`delta` subtracts;
:func:`total` and :func:`buckets` read a delta; :func:`quantile` interpolates a
percentile from cumulative histogram buckets the way PromQL's
``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping

from prometheus_client.registry import Collector

#: (sample name, sorted label pairs)
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[SampleKey, float]


def take_samples(registry: Collector, families: Collection[str]) -> Samples:
    """Current values of the named metric families (``_created`` samples skipped)."""
    out: Samples = {}
    for family in registry.collect():
        if family.name not in families:
            continue
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def delta(new: Mapping[SampleKey, float], old: Mapping[SampleKey, float]) -> Samples:
    """``new - old`` per series; a series that went down was reset, so it counts from 0."""
    out: Samples = {}
    for key, value in new.items():
        d = value - old.get(key, 0.0)
        out[key] = value if d < 0 else d
    return out


def _matches(labels: tuple[tuple[str, str], ...], match: Mapping[str, str]) -> bool:
    if not match:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in match.items())


def total(samples: Mapping[SampleKey, float], name: str, **match: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``match``."""
    return sum(v for (n, labels), v in samples.items() if n == name and _matches(labels, match))


def by_label(
    samples: Mapping[SampleKey, float], name: str, label: str, **match: str
) -> dict[str, float]:
    """Samples called ``name`` summed per value of ``label``."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n != name or not _matches(labels, match):
            continue
        key = dict(labels).get(label)
        if key is not None:
            out[key] = out.get(key, 0.0) + v
    return out


def buckets(
    samples: Mapping[SampleKey, float], histogram: str, **match: str
) -> list[tuple[float, float]]:
    """Cumulative ``(upper bound, count)`` of a histogram, summed over matching series."""
    per_le: dict[float, float] = {}
    name = histogram + "_bucket"
    for (n, labels), v in samples.items():
        if n != name or not _matches(labels, match):
            continue
        le = dict(labels).get("le")
        if le is None:
            continue
        bound = math.inf if le in ("+Inf", "inf", "Inf") else float(le)
        per_le[bound] = per_le.get(bound, 0.0) + v
    return sorted(per_le.items())


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The ``q``-quantile (0 < q <= 1) from cumulative buckets, or ``None`` without data.

    Linear interpolation inside the bucket holding the rank; the first bucket starts
    at 0; a rank in the ``+Inf`` bucket gives the highest finite bound (as PromQL).
    """
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    if not cumulative:
        return None
    count = cumulative[-1][1]
    if count <= 0:
        return None
    rank = q * count
    prev_bound, prev_count = 0.0, 0.0
    for bound, cum in cumulative:
        if cum >= rank:
            if math.isinf(bound):
                finite = [b for b, _ in cumulative if not math.isinf(b)]
                return finite[-1] if finite else None
            in_bucket = cum - prev_count
            if in_bucket <= 0 or bound <= prev_bound:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket
        prev_bound, prev_count = bound, cum
    return None


def ratio(part: float, whole: float) -> float | None:
    """``part / whole``, or ``None`` when ``whole`` is 0."""
    return part / whole if whole > 0 else None


class SampleWindow:
    """A ring of ``(time, samples)`` snapshots covering the last ``span`` seconds."""

    def __init__(self, span: float = 300.0, interval: float = 10.0) -> None:
        if span <= 0 or interval <= 0:
            raise ValueError("span and interval must be positive")
        self.span = span
        self.interval = interval
        self._ring: deque[tuple[float, Samples]] = deque(maxlen=int(span // interval) + 2)

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, t: float, samples: Samples) -> None:
        """Record a snapshot taken at ``t`` (monotonic seconds, non-decreasing)."""
        self._ring.append((t, samples))
        while len(self._ring) > 1 and self._ring[1][0] <= t - self.span:
            self._ring.popleft()

    def baseline(self, now: float) -> tuple[float, Samples] | None:
        """The oldest snapshot no older than ``span`` before ``now`` (else the oldest)."""
        chosen: tuple[float, Samples] | None = None
        for entry in self._ring:
            chosen = entry
            if entry[0] >= now - self.span:
                break
        return chosen

    def recent(self, now: float, current: Samples) -> tuple[float, Samples]:
        """(seconds covered, ``current - baseline``); from zero when there is no baseline."""
        base = self.baseline(now)
        if base is None:
            return 0.0, dict(current)
        t0, old = base
        return max(0.0, now - t0), delta(current, old)
