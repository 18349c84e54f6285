"""Every Redis key and TTL of the cache, in one place.

Key shape: ``{prefix}:v{schema}:{view}:{{{id}}}`` — the id is the Redis Cluster hash
tag, so an entry, its guard (version tombstone) and its fill lease live in one slot
and one Lua script may touch all three. The schema version is part of the key: a
changed model never reads an old shape.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ordercache.cache.views import SPECS, View
from ordercache.config.settings import Settings
from ordercache.errors import InvalidIdError

_ID_RE = re.compile(r"^[1-9][0-9]{0,18}$")
_MAX_ID = 2**63 - 1


def validate_id(raw: object) -> int:
    """Return ``raw`` as a positive 64-bit id, or raise :class:`InvalidIdError`.

    Ids are checked before they become part of a key: a positive integer, at most
    19 decimal digits, no sign, no leading zero, no whitespace.
    """
    if isinstance(raw, bool):
        raise InvalidIdError("id must be a positive integer, not a boolean")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str | bytes):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        if not _ID_RE.fullmatch(text):
            raise InvalidIdError("id must be 1-19 decimal digits without a leading zero")
        value = int(text)
    else:
        raise InvalidIdError(f"id must be an integer, not {type(raw).__name__}")
    if not 0 < value <= _MAX_ID:
        raise InvalidIdError("id out of range (1 .. 2**63-1)")
    return value


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds keys for one deployment (``prefix`` isolates tenants and tests)."""

    prefix: str = "oc"

    def entry(self, view: View, entity_id: int) -> str:
        """Key of the cached value."""
        return f"{self.prefix}:v{SPECS[view].schema_version}:{view.value}:{{{entity_id}}}"

    def guard(self, view: View, entity_id: int) -> str:
        """Key of the version tombstone / fill generation (same slot as the entry)."""
        return self.entry(view, entity_id) + ":g"

    def lease(self, view: View, entity_id: int) -> str:
        """Key of the cross-process fill lease (same slot as the entry)."""
        return self.entry(view, entity_id) + ":l"

    def triple(self, view: View, entity_id: int) -> tuple[str, str, str]:
        """(entry, guard, lease) keys: what every cache script receives, in that order."""
        entry = self.entry(view, entity_id)
        return entry, entry + ":g", entry + ":l"

    def health(self, node: str) -> str:
        """Key the readiness probe writes and deletes."""
        return f"{self.prefix}:health:{node}"

    def stream(self, name: str) -> str:
        """Key of a Redis stream owned by ordercache."""
        return f"{self.prefix}:stream:{name}"


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    """TTLs per view, with jitter so entries filled together do not expire together."""

    order: int = 900
    history: int = 3600
    inventory: int = 300
    negative: int = 30
    jitter: float = 0.1
    tombstone: int = 300

    @classmethod
    def from_settings(cls, s: Settings) -> TtlPolicy:
        return cls(
            order=s.ttl_order,
            history=s.ttl_history,
            inventory=s.ttl_inventory,
            negative=s.ttl_negative,
            jitter=s.ttl_jitter,
            tombstone=s.tombstone_ttl,
        )

    def base_seconds(self, view: View) -> int:
        return SPECS[view].ttl(self)

    def ttl_ms(self, view: View, *, negative: bool = False) -> int:
        """TTL in milliseconds for a fill, reduced by up to ``jitter`` at random."""
        base_ms = (self.negative if negative else self.base_seconds(view)) * 1000
        if self.jitter <= 0:
            return base_ms
        return max(1, int(base_ms * (1.0 - random.random() * self.jitter)))

    def tombstone_ms(self) -> int:
        return self.tombstone * 1000
