"""An httpx2 transport that moves to new connections when the task's SVID rotates."""

from __future__ import annotations

import httpx2


class RotatingTransport(httpx2.AsyncBaseTransport):
    """Delegates to one connection pool per SVID generation.

    A pool's connections keep the certificate they were made with, and the server
    refuses requests from an expired one; so each rotation starts a new pool (whose
    connections present the new SVID), leaving the previous pool to finish what is in
    flight on it (a long-lived SSE stream, say). Rotation happens at half life, so the
    generation before the previous one has expired by the time a further one arrives:
    its pool is closed then.
    """

    def __init__(self, task, **transport_kwargs):
        self._task = task
        self._kwargs = transport_kwargs
        self._generation = -1
        self._current: httpx2.AsyncHTTPTransport | None = None
        self._retired: list[httpx2.AsyncHTTPTransport] = []

    async def _pool(self) -> httpx2.AsyncHTTPTransport:
        generation = self._task.rotations
        if generation != self._generation or self._current is None:
            if self._current is not None:
                self._retired.append(self._current)
            self._current = httpx2.AsyncHTTPTransport(verify=self._task.ssl_context(), **self._kwargs)
            self._generation = generation
            while len(self._retired) > 1:
                await self._retired.pop(0).aclose()
        return self._current

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        pool = await self._pool()
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        pools = [*self._retired, *([self._current] if self._current else [])]
        self._retired, self._current = [], None
        for p in pools:
            await p.aclose()
