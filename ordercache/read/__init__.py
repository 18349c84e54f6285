"""Reading the three views through the cache: the one way to read (see reader.py)."""

from ordercache.read.reader import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    HistoryPage,
    InvalidParamError,
    Page,
    Read,
    ViewReader,
    parse_page,
)

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "HistoryPage",
    "InvalidParamError",
    "Page",
    "Read",
    "ViewReader",
    "parse_page",
]
