"""A proxy between varmor's processes and the API server, for the faults a network or a
busy API server causes: it can cut every connection (a partition), answer every request
429 Too Many Requests with a Retry-After (an API server shedding load), or delay every
response (a slow one), and it counts what passes.

It terminates TLS with the API server's own serving certificate (which names 127.0.0.1,
whatever the port) and forwards each request, its bearer token included, over TLS to the
API server, streaming the response (watches stay watches). The test's own client talks
to the API server directly and sees none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from varmor.dev.cluster import ControlPlane, free_port

HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


class ApiProxy:
    def __init__(self, plane: ControlPlane) -> None:
        assert plane.state is not None
        pki = Path(plane.workdir) / "pki"
        self.upstream = plane.state.server
        self.port = free_port()
        self.mode = "open"  # open | cut | throttle
        self.delay = 0.0  # seconds added before each response (a slow API server)
        self.throttled_at: list[float] = []  # loop time of each 429 (the rate while throttled)
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ssl.load_cert_chain(pki / "apiserver.crt", pki / "apiserver.key")
        self._client_ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._live: dict[int, web.BaseRequest] = {}  # watches being answered, by id (requests do not hash)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._server_ssl).start()

    async def stop(self) -> None:
        self.cut()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def cut(self) -> None:
        """Drop every open connection (watches included) and refuse new ones."""
        self.mode = "cut"
        self._drop_all()

    def throttle(self) -> None:
        """Answer every new request 429 (open watches are cut too: they must come back)."""
        self.mode = "throttle"
        self._drop_all()

    def open(self) -> None:
        self.mode = "open"

    def _drop_all(self) -> None:
        for request in list(self._live.values()):
            if request.transport is not None:
                request.transport.abort()
        self._live.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "cut":
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPServiceUnavailable()  # never sent: the connection is gone
        if self.mode == "throttle":
            self.throttled_at.append(asyncio.get_running_loop().time())
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "TooManyRequests", "code": 429},
                status=429,
                headers={"Retry-After": "1"},
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        async with self._session.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            headers=headers,
            data=body or None,
            ssl=self._client_ssl,
        ) as upstream:
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            if request.query.get("watch") not in ("true", "1"):
                return web.Response(status=upstream.status, headers=out, body=await upstream.read())
            response = web.StreamResponse(status=upstream.status, headers=out)
            await response.prepare(request)
            self._live[id(request)] = request
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            finally:
                self._live.pop(id(request), None)
            return response


@contextlib.asynccontextmanager
async def proxy_to(plane: ControlPlane) -> AsyncIterator[ApiProxy]:
    proxy = ApiProxy(plane)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
