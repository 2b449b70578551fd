"""Every error is JSON that says what is wrong: {"error": "...", "detail": [...]}; never a trace."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gateway.client import ModelError

log = logging.getLogger("backstory.gateway")


def field_errors(e: RequestValidationError) -> list[dict]:
    """pydantic's errors as {"field", "message"}, the field named as the client sent it."""
    out = []
    for err in e.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        out.append({"field": ".".join(loc) or "body", "message": message})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        details = field_errors(e)
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return JSONResponse({"error": f"invalid request: {summary}", "detail": details}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=e.headers)

    @app.exception_handler(ModelError)
    async def model_error(request: Request, e: ModelError) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return JSONResponse({"error": e.message}, e.status, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; it has been logged"}, 500)
