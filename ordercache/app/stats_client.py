"""``ordercache stats``: fetch a running worker's ``/stats`` and summarise it.

The summary is a few aligned lines a person reads at a glance: the status and its
reasons, per view the requests, hit ratio and p99, Redis, the pipeline and the dead
letters. ``--json`` prints the document unchanged for scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ordercache.app.cli_base import CommandFailed


@dataclass(frozen=True, slots=True)
class StatsDocument:
    raw: str
    data: Mapping[str, Any]


async def fetch_stats(base_url: str, *, timeout: float) -> StatsDocument:
    """GET ``{base_url}/stats``; an unreachable worker or a bad answer: CommandFailed."""
    url = base_url.rstrip("/") + "/stats"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as resp,
        ):
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CommandFailed(
            f"cannot reach the worker at {base_url} ({type(exc).__name__}); "
            "is it running? (--url, or ORDERCACHE_WEB_HOST / ORDERCACHE_WEB_PORT)"
        ) from None
    if status != 200:
        raise CommandFailed(f"the worker at {base_url} answered /stats with HTTP {status}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CommandFailed(f"the worker at {base_url} answered /stats with no JSON") from None
    if not isinstance(data, dict):
        raise CommandFailed(f"the worker at {base_url} answered /stats with no JSON object")
    return StatsDocument(body.decode(), data)


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def summarize(doc: Mapping[str, Any]) -> str:
    """A human summary of a ``/stats`` document (pure; tolerant of missing parts)."""
    lines = [f"status     {doc.get('status', '?')}"]
    lines += [f"  reason   {r}" for r in doc.get("reasons") or []]
    window = doc.get("window") or {}
    lines.append(f"window     {_num(window.get('seconds'))} s")
    for name, v in (doc.get("views") or {}).items():
        lat = v.get("latency_ms") or {}
        lines.append(
            f"{name:<10} {_num(v.get('requests'))} requests, hit ratio "
            f"{_num(v.get('hit_ratio'), '{:.2f}')}, p50 {_num(lat.get('p50'), '{:.2f}')} ms, "
            f"p99 {_num(lat.get('p99'), '{:.2f}')} ms"
        )
    redis = doc.get("redis") or {}
    if redis:
        lines.append(
            f"redis      {'up' if redis.get('up') else 'DOWN'}, "
            f"{_num(redis.get('used_memory_bytes'))} bytes used, "
            f"{_num(redis.get('keys'))} keys, {_num(redis.get('connected_clients'))} clients, "
            f"breaker {(doc.get('cache') or {}).get('breaker', '?')}"
        )
    pipe = doc.get("pipeline") or {}
    if pipe:
        lag = sum((pipe.get("consumer_lag") or {}).values())
        lines.append(
            f"pipeline   {_num(pipe.get('events_applied'))} events applied "
            f"({_num(pipe.get('events_applied_window'))} in the window), lag {lag:,}, "
            f"{_num(pipe.get('dlq_messages'))} dead letters"
        )
    return "\n".join(lines)
