"""The one Lua script loader: scripts ship as package files, run by SHA, reload on NOSCRIPT.

A restarted or failed-over server has forgotten the scripts; :func:`run_loading`
then loads them (on every primary of a cluster) and runs the work again. Every
caller's scripts are idempotent under replay (version guards, dedupe state), so
running a pipeline a second time is safe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from redis.exceptions import NoScriptError

from ordercache.redisconn.client import AnyRedis

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script's source and SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str

    @classmethod
    def from_package(cls, package: str, name: str) -> LuaScript:
        """``lua/{name}.lua`` of ``package`` (shipped as package data)."""
        source = resources.files(package).joinpath("lua", f"{name}.lua").read_text("utf-8")
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())

    def evalsha(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        """``EVALSHA`` arguments for ``execute_command`` (a form that standalone and
        cluster pipelines alike route by the first key)."""
        return ["EVALSHA", self.sha, len(keys), *keys, *args]


async def load_scripts(client: AnyRedis, scripts: Iterable[LuaScript]) -> None:
    """SCRIPT LOAD each script (a cluster client sends it to every primary)."""
    for script in scripts:
        await client.script_load(script.source)


def raise_noscript(results: Iterable[object]) -> None:
    """Raise the first NOSCRIPT among pipeline replies taken with ``raise_on_error=False``."""
    for res in results:
        if isinstance(res, NoScriptError):
            raise res


async def run_loading(
    client: AnyRedis, scripts: Iterable[LuaScript], work: Callable[[], Awaitable[T]]
) -> T:
    """Run ``work``; on NOSCRIPT load ``scripts`` and run it once more."""
    try:
        return await work()
    except NoScriptError:
        await load_scripts(client, scripts)
        return await work()
