"""The worker's HTTP server: Faust's aiohttp driver, with malformed requests answered
by a fixed 400 and one log line.

aiohttp answers a request it cannot parse (an over-long request line, an unknown
method, non-HTTP bytes) from ``RequestHandler.handle_error``, before any route or
middleware runs: the body is the parser's message, which quotes the request bytes,
and the error is logged with a traceback per request. Here the 4xx answer is a
fixed body and one line naming the parser error's class and the peer, never the
bytes. Server errors (5xx) keep aiohttp's behaviour (they are bugs: the traceback
is wanted).

Faust picks its web driver from the ``web`` setting's URL scheme through the
``faust.web.drivers`` entry points (pyproject.toml registers ``ordercache``).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server
from faust.web.drivers import aiohttp as faust_aiohttp

log = logging.getLogger(__name__)

#: The ``web`` setting that selects this driver.
WEB_URL = "ordercache://"
#: The whole body of every malformed-request answer.
BAD_REQUEST_BODY = "400 Bad Request\n"


class _RequestHandler(RequestHandler):
    """aiohttp's connection handler with a quiet, fixed answer to malformed requests."""

    __slots__ = ()  # same layout as RequestHandler (see _Server.__call__)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.warning(
            "malformed HTTP request from %s: %s (answered %d)",
            request.remote,
            type(exc).__name__ if exc is not None else "unparsable",
            status,
        )
        resp = web.Response(status=status, text=BAD_REQUEST_BODY, content_type="text/plain")
        resp.force_close()
        return resp


class _Server(Server):
    """aiohttp's server, its connections handled by :class:`_RequestHandler`."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        # aiohttp builds the handler itself (with its keyword arguments); only the
        # error answer differs, so the instance takes the subclass (same slots).
        handler.__class__ = _RequestHandler
        return handler


class _AppRunner(web.AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


class Web(faust_aiohttp.Web):
    """Faust's aiohttp web driver with :class:`_AppRunner`."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._runner = _AppRunner(self.web_app, access_log=None)
