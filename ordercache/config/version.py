"""The project's version, from the installed distribution's metadata (pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version


def project_version() -> str:
    """``ordercache``'s version (not Faust's)."""
    try:
        return dist_version("ordercache")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "unknown"
