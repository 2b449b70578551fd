"""The seam between the gateway and the model service.

`ModelClient` wraps any BentoML client of the `Backstory` service (the `bentoml.depends` proxy when
mounted, `bentoml.AsyncHTTPClient` when standalone) and turns its failures into `ModelError`s with
the HTTP status the gateway answers with. Tests replace the client factory at this seam only.
"""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from backstory.schemas import BackstoryRequest, Generation


class ModelError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def translate(e: Exception) -> ModelError:
    """Map a client failure to what the gateway's caller should see."""
    from bentoml.exceptions import BentoMLException

    if isinstance(e, ModelError):
        return e
    if isinstance(e, httpx.TimeoutException | TimeoutError):
        return ModelError(504, "the model service did not answer in time")
    if isinstance(e, httpx.TransportError | ConnectionError | OSError):
        return ModelError(503, "the model service is unavailable", retry_after=5)
    if isinstance(e, BentoMLException):
        status = int(getattr(e, "error_code", 500))
        if status in (429, 503):
            return ModelError(status, "the model service is busy or starting; retry shortly",
                              retry_after=2)
        if status == 504:
            return ModelError(504, "the model service did not answer in time")
        return ModelError(502, "the model service failed to generate")
    return ModelError(502, "the model service failed to generate")


class ModelClient:
    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory  # returns the async BentoML client, looked up per call

    async def _client(self) -> Any:
        try:
            client = self.factory()
            return await client if hasattr(client, "__await__") else client
        except Exception as e:
            raise translate(e) from e

    async def generate(self, request: BackstoryRequest) -> Generation:
        client = await self._client()
        try:
            (result,) = await client.generate(requests=[request.model_dump()])
        except Exception as e:
            raise translate(e) from e
        return result if isinstance(result, Generation) else Generation.model_validate(result)

    async def stream(self, request: BackstoryRequest) -> AsyncIterator[dict]:
        """Yields {"text": str} pieces, then {"result": {...}}."""
        client = await self._client()
        buffer = ""
        try:
            async for chunk in client.stream(request=request.model_dump()):
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    if line:
                        yield json.loads(line)
        except Exception as e:
            raise translate(e) from e

    async def info(self) -> dict:
        client = await self._client()
        try:
            return await client.info()
        except Exception as e:
            raise translate(e) from e
