"""Can Redis evict what correctness depends on? The ``maxmemory-policy`` check.

The version guards (invariant 1) and the stream mirror's dedupe state (invariant 6)
are keys *with a TTL*: they must live until the TTL ends, never shorter. Under
``maxmemory`` Redis evicts according to ``maxmemory-policy``:

* ``allkeys-*`` may evict any key: guards, dedupe state, even the streams;
* ``volatile-*`` may evict any key with a TTL — which is exactly the guards and the
  dedupe state (LRU merely makes a fresh guard less likely to go, not impossible);
* ``noeviction`` evicts nothing: at the cap, writes that need memory are refused
  instead (fills are skipped; the cache's invalidation and refresh scripts are
  allowed past the cap, so an invalidation is never refused).

So the safe settings are ``noeviction``, or no ``maxmemory`` at all (``0``: nothing
is ever evicted, whatever the policy). The policy is read from ``INFO memory``
(``maxmemory_policy``), which a least-privilege ACL user may run where ``CONFIG GET``
is usually denied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from ordercache.redisconn.client import AnyRedis

#: Policies under which Redis never evicts a key.
SAFE_POLICIES = frozenset({"noeviction"})


@dataclass(frozen=True, slots=True)
class EvictionPolicy:
    """One server's ``maxmemory`` (bytes; 0: no limit) and ``maxmemory-policy``."""

    policy: str
    maxmemory: int


def eviction_risk(nodes: Sequence[EvictionPolicy]) -> str | None:
    """Why these servers could evict version guards or dedupe state; None if they cannot."""
    for node in nodes:
        if node.maxmemory <= 0 or node.policy in SAFE_POLICIES:
            continue
        if node.policy.startswith("allkeys-"):
            what = "version guards, stream dedupe state and streams"
        elif node.policy.startswith("volatile-"):
            what = "version guards and stream dedupe state (keys with a TTL)"
        else:
            what = "keys (unknown policy)"
        return f"maxmemory-policy {node.policy} can evict {what}"
    return None


def parse_policies(raw: Mapping[str, Any]) -> list[EvictionPolicy]:
    """``INFO memory`` of one server, or ``{node: info}`` from a cluster client."""
    nodes = (
        list(raw.values()) if raw and all(isinstance(v, Mapping) for v in raw.values()) else [raw]
    )
    out: list[EvictionPolicy] = []
    for node in nodes:
        policy = node.get("maxmemory_policy", "")
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
        try:
            maxmemory = int(node.get("maxmemory", 0))
        except (TypeError, ValueError):
            maxmemory = 0
        out.append(EvictionPolicy(policy, maxmemory))
    return out


async def read_policies(client: AnyRedis, *, timeout: float) -> list[EvictionPolicy]:
    """The eviction settings of the server(s); raises on a Redis failure."""
    async with asyncio.timeout(timeout):
        if isinstance(client, RedisCluster):
            raw = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        else:
            raw = await client.info("memory")
    return parse_policies(raw)
