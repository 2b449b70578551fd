"""The seam between the gateway and the model service.

`ModelClient` wraps any BentoML client of the `Backstory` service (the `bentoml.depends` proxy when
mounted, `bentoml.AsyncHTTPClient` when standalone) and turns its failures into `ModelError`s with
the HTTP status the gateway answers with. Tests replace the client factory at this seam only.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from backstory.config import get_settings
from backstory.schemas import BackstoryRequest, Generation, PromptRequest

log = logging.getLogger("backstory.gateway")


class ModelError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def translate(e: Exception) -> ModelError:
    """Map a client failure to what the gateway's caller should see."""
    import aiohttp  # the bentoml.depends proxy's transport
    from bentoml.exceptions import BentoMLException

    if isinstance(e, ModelError):
        return e
    if isinstance(e, httpx.TimeoutException | TimeoutError | aiohttp.ServerTimeoutError):
        return ModelError(504, "the model service did not answer in time")
    if isinstance(e, httpx.TransportError | aiohttp.ClientConnectionError | OSError):
        return ModelError(503, "the model service is unavailable", retry_after=5)
    if isinstance(e, BentoMLException):
        status = int(getattr(e, "error_code", 500))
        if status in (429, 503):
            return ModelError(status, "the model service is busy or starting; retry shortly",
                              retry_after=2)
        if status == 504:
            return ModelError(504, "the model service did not answer in time")
        log.warning("model service error %s: %s", status, e)
        return ModelError(502, "the model service failed to generate")
    log.warning("model service call failed: %r", e)
    return ModelError(502, "the model service failed to generate")


class Admission:
    """The rows this gateway has in the model service, at most `limit` (max_concurrency): a
    burst over it is refused here, at once, with 429. Not left to the model service's own limit
    alone: it answers 429 before reading the request body, and the depends proxy's connection,
    still writing the body, sees a reset (a 503 after a retry, in a burst of 200: issue 10).

    A request takes its first row on arrival (gateway/middleware.py), before its body is read:
    in a burst the first `limit` arrivals are admitted and each other one is refused without
    parsing. The rows it then asks for (`rows(n)`: a roster takes several) count that one."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0  # one event loop per gateway worker: no lock needed

    @property
    def busy(self) -> ModelError:
        return ModelError(429, f"the model service is busy ({self.limit} rows in flight); "
                          "retry shortly", retry_after=1)

    @contextmanager
    def rows(self, n: int) -> Iterator[None]:
        held = _held.get()
        more = max(n - held, 0)
        if self.used + more > self.limit:
            raise self.busy
        self.used += more
        _held.set(held + more)
        try:
            yield
        finally:  # not ContextVar.reset: a streamed body's generator ends in another context
            self.used -= more
            _held.set(held)


# The rows the current request holds (a context variable: each request is its own task).
_held: ContextVar[int] = ContextVar("held_rows", default=0)


class ModelClient:
    def __init__(self, factory: Callable[[], Any], timeout_s: float | None = None,
                 max_rows: int | None = None):
        self.factory = factory  # returns the async BentoML client, looked up per call
        # A call the depends proxy loses ends as a 504 at the service's own timeout instead of
        # hanging its client: one deadline for the call, its retry included.
        self.timeout_s = timeout_s or get_settings().timeout_s
        self.admission = Admission(max_rows or get_settings().max_concurrency)

    async def _client(self) -> Any:
        try:
            client = self.factory()
            return await client if hasattr(client, "__await__") else client
        except Exception as e:
            raise translate(e) from e

    async def generate(self, request: BackstoryRequest) -> Generation:
        (result,) = await self.generate_many([request])
        return result

    async def generate_many(self, requests: list[BackstoryRequest | PromptRequest]
                            ) -> list[Generation]:
        """Whole stories (or free prompts' texts); several rows (candidates, a roster) go in
        one call of the model service, so that they join its batch together, each with its own
        settings and seed."""
        endpoint = "complete" if isinstance(requests[0], PromptRequest) else "generate"
        with self.admission.rows(len(requests)):
            client = await self._client()
            payload = [r.model_dump() for r in requests]
            try:
                results = await asyncio.wait_for(self._call(getattr(client, endpoint), payload),
                                                 self.timeout_s)
            except Exception as e:
                raise translate(e) from e
        return [r if isinstance(r, Generation) else Generation.model_validate(r) for r in results]

    @staticmethod
    async def _call(endpoint: Callable, payload: list[dict]) -> list:
        import aiohttp

        try:
            return await endpoint(requests=payload)
        except aiohttp.ClientConnectionError as e:
            # BentoML 1.4's depends proxy recycles its HTTP session every 100 requests and
            # drops the connections in flight on it (ServerDisconnected, "Cannot write to
            # closing transport"). Generating has no side effects: send it once more.
            if isinstance(e, aiohttp.ServerTimeoutError):
                raise
            return await endpoint(requests=payload)

    async def stream(self, request: BackstoryRequest | PromptRequest) -> AsyncIterator[dict]:
        """Yields {"text": str} pieces, then {"result": {...}}."""
        with self.admission.rows(1):
            async for item in self._stream(request):
                yield item

    async def _stream(self, request: BackstoryRequest | PromptRequest) -> AsyncIterator[dict]:
        client = await self._client()
        buffer, chunks, url = "", None, getattr(client, "url", None)
        endpoint = "stream_prompt" if isinstance(request, PromptRequest) else "stream"
        try:
            payload = request.model_dump()
            chunks = (raw_stream(url, payload, endpoint) if url
                      else getattr(client, endpoint)(request=payload))
            async for chunk in chunks:
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    if line:
                        yield json.loads(line)
        except Exception as e:
            raise translate(e) from e
        finally:  # our caller left (client disconnected): close the upstream stream now, so the
            if chunks is not None:  # model service ends the row instead of writing to nobody
                await chunks.aclose()

    async def info(self) -> dict:
        client = await self._client()
        try:
            return await client.info()
        except Exception as e:
            raise translate(e) from e


@cache
def http_for(url: str) -> httpx.AsyncClient:
    """An HTTP client for a BentoML service address: tcp://, file:// (a Unix socket) or http(s)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        transport = httpx.AsyncHTTPTransport(uds=unquote(parsed.path))
        return httpx.AsyncClient(base_url="http://model", transport=transport, timeout=None)
    base = f"http://{parsed.netloc}" if parsed.scheme == "tcp" else url
    return httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(None, connect=5))


async def raw_stream(url: str, payload: dict, endpoint: str = "stream") -> AsyncIterator[str]:
    """The model service's stream over plain HTTP. Not the BentoML client's stream: that one never
    closes its HTTP response, so a browser that leaves would keep the model writing for nobody.
    Closing this generator closes the connection, and the model service ends the row."""
    from bentoml.exceptions import BentoMLException

    async with http_for(url).stream("POST", f"/{endpoint}", json={"request": payload}) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise BentoMLException(resp.text[:200], error_code=resp.status_code)
        async for text in resp.aiter_text():
            yield text
