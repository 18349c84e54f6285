"""Batch reads (one MGET, one validation per batch) and body reads (hits served as
stored): table tests of the decoding, and the service against real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from ordercache.cache.codec import CorruptEntryError, encode_negative, encode_value, entry_body
from ordercache.cache.service import CacheService
from ordercache.cache.views import INVENTORY, View
from ordercache.models.views import ProductInventory
from tests.test_cache_service import inv, make_cache


@pytest.fixture
def cache(redis_raw: aioredis.Redis, key_prefix: str) -> CacheService:
    return make_cache(redis_raw, key_prefix)


def _json(value: ProductInventory) -> bytes:
    return value.__pydantic_serializer__.to_json(value)


A, B = inv(1, 3), inv(2, 5)


@pytest.mark.parametrize(
    ("raws", "expected"),
    [
        ([], []),
        ([None, None], [None, None]),
        ([encode_value(A), None, encode_value(B)], [A, None, B]),
        ([encode_negative(4), encode_value(B)], [None, B]),
        # a corrupt entry is dropped, the others still decode
        ([encode_value(A), b"v1|{not json", encode_value(B)], [A, None, B]),
        ([b"no prefix", encode_value(A)], [None, A]),
        # a body that would split into two array items must not shift the others
        ([b"v1|" + _json(A) + b"," + _json(B), encode_value(B)], [None, B]),
        # a body of another shape (extra fields are forbidden)
        ([b'v1|{"product_id": 1}', encode_value(A)], [None, A]),
    ],
)
def test_decode_many(raws: list[bytes | None], expected: list[ProductInventory | None]) -> None:
    assert INVENTORY.decode_many(raws) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (encode_value(A), _json(A)),
        (encode_negative(2), None),
        (b"v1|{}", b"{}"),
    ],
)
def test_entry_body(raw: bytes, expected: bytes | None) -> None:
    assert entry_body(raw) == expected


@pytest.mark.parametrize("raw", [b"v1", b"v1|", b"v1|[1]", b"v1|{truncated", b"x"])
def test_entry_body_rejects(raw: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        entry_body(raw)


async def test_get_many_one_round_trip(cache: CacheService, redis_raw: aioredis.Redis) -> None:
    values = [inv(pid, 2) for pid in range(1, 11)]
    assert await cache.set_many(INVENTORY, values) == 10
    await redis_raw.set(cache.keys.entry(View.INVENTORY, 11), encode_negative(1))
    await redis_raw.set(cache.keys.entry(View.INVENTORY, 12), b"v1|garbage")
    got = await cache.get_many(INVENTORY, [*range(1, 14)])
    assert got == {v.product_id: v for v in values}


async def test_body_hit_is_the_stored_json(cache: CacheService, redis_raw: aioredis.Redis) -> None:
    loads = 0

    async def loader(pid: int) -> ProductInventory | None:
        nonlocal loads
        loads += 1
        return inv(pid, 7) if pid != 404 else None

    miss = await cache.get_or_load_body(INVENTORY, 5, loader)
    assert (miss.status, miss.body) == ("miss", _json(inv(5, 7)))
    stored = await redis_raw.get(cache.keys.entry(View.INVENTORY, 5))
    hit = await cache.get_or_load_body(INVENTORY, 5, loader)
    assert hit.status == "hit"
    assert hit.body == stored.partition(b"|")[2] == _json(inv(5, 7))  # type: ignore[union-attr]
    assert (await cache.get_or_load_body(INVENTORY, 404, loader)).body is None
    negative = await cache.get_or_load_body(INVENTORY, 404, loader)
    assert (negative.status, negative.body) == ("hit", None)
    assert loads == 2
    # a corrupt entry is replaced by a load, never served
    await redis_raw.set(cache.keys.entry(View.INVENTORY, 6), b"v1|[1,2]")
    replaced = await cache.get_or_load_body(INVENTORY, 6, loader)
    assert (replaced.status, replaced.body) == ("miss", _json(inv(6, 7)))
