"""Cross-cutting HTTP concerns, as one pure ASGI middleware (safe for streamed responses):
request ids, one structured log line per request, security headers, body size limit, API key."""

import hmac
import json
import logging
import time
import uuid
from contextlib import ExitStack

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from backstory.config import get_settings
from gateway.client import ModelError

log = logging.getLogger("backstory.access")
PROTECTED = ("/api/", "/generate", "/v1/")
# The routes that take rows in the model service (gateway/client.py's Admission).
MODEL_ROUTES = {"/api/generate", "/generate", "/api/stream", "/api/roster", "/api/reroll",
                "/v1/chat/completions", "/v1/completions"}
CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# /docs and /redoc start Swagger UI / ReDoc (served from DOCS_ASSETS) with an inline script.
DOCS_ASSETS = "/docs-assets"
DOCS_CSP = (b"default-src 'self'; script-src 'self' 'unsafe-inline'; "
            b"style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src blob:; "
            b"frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def presented_key(headers: dict[bytes, bytes]) -> str:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get(b"x-api-key", b"").decode("latin-1")


class GatewayMiddleware:
    def __init__(self, app):
        self.app, self.settings = app, get_settings()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        started, state = time.perf_counter(), {"status": 500}
        path = scope["path"]
        notes = scope.setdefault("state", {})  # routes add tokens (and text, if configured)

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message.setdefault("headers", [])
                csp = DOCS_CSP if path in ("/docs", "/redoc") else CSP
                message["headers"] = [*message["headers"], *SECURITY_HEADERS,
                                      (b"content-security-policy", csp),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if error := self.refuse(path, headers):
                status, text = error
                return await self.reply(send_wrapper, status, text, path)
            with ExitStack() as held:
                try:
                    self.admit(scope, held)
                except ModelError as busy:
                    await self.drain(receive)
                    return await self.reply(send_wrapper, busy.status, busy.message, path,
                                            [(b"retry-after", str(busy.retry_after).encode())])
                await self.app(scope, self.limited(receive), send_wrapper)
        except _TooLarge:
            await self.reply(send_wrapper, 413,
                             f"request body larger than {self.settings.max_body_bytes} bytes", path)
        finally:
            log.info(json.dumps({"request_id": request_id, "method": scope["method"],
                                 "route": path, "status": state["status"],
                                 "ms": round((time.perf_counter() - started) * 1000, 1),
                                 "tokens": notes.get("tokens"), **notes.get("text", {})},
                                ensure_ascii=False))

    def refuse(self, path: str, headers: dict) -> tuple[int, str] | None:
        key = self.settings.api_key
        if key and path.startswith(PROTECTED) and not hmac.compare_digest(
                presented_key(headers).encode(), key.encode()):
            return 401, "missing or wrong API key (send X-API-Key or Authorization: Bearer)"
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return 413, f"request body larger than {self.settings.max_body_bytes} bytes"
        return None

    @staticmethod
    def admit(scope, held: ExitStack) -> None:
        """A model route takes its first row in the model service on arrival (held until its
        response is sent), or is refused with ModelError 429 before its body is parsed: in a
        burst a refusal costs the event loop microseconds, not a request's worth of parsing
        (gateway/client.py's Admission)."""
        client = getattr(scope["app"].state, "client", None)
        if scope["path"] in MODEL_ROUTES and client is not None:
            held.enter_context(client.admission.rows(1))

    async def drain(self, receive) -> None:
        """Read (and drop) a refused request's body: replying while the client is still
        writing it would reset the connection under it."""
        read, message = self.limited(receive), {"more_body": True}  # one count for the body
        while message.get("more_body") and message.get("type") != "http.disconnect":
            message = await read()

    def limited(self, receive):
        """Count body bytes as they arrive: Content-Length can be absent (chunked uploads)."""
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.settings.max_body_bytes:
                raise _TooLarge
            return message

        return wrapped

    @staticmethod
    async def reply(send, status: int, text: str, path: str,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        if path.startswith("/v1/"):  # the OpenAI-compatible routes answer in OpenAI's shape
            from gateway.openai import error_body

            body = json.dumps(error_body(status, text)).encode()
        else:
            body = json.dumps({"error": text}).encode()
        extra = [*(extra or []), *([(b"www-authenticate", b"Bearer")] if status == 401 else [])]
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *extra]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def configure_logging() -> None:
    """One JSON line per request on stderr, whatever the host server's logging setup is."""
    logger = logging.getLogger("backstory")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def install_middleware(app: FastAPI) -> None:
    configure_logging()
    settings = get_settings()
    if settings.cors_origins:  # off unless configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(GatewayMiddleware)
