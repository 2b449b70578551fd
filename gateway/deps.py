"""FastAPI dependencies, as Annotated aliases the routes declare."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from pydantic import ValidationError

from backstory.config import Settings, get_settings
from gateway.client import ModelClient
from gateway.shapes import GenerateRequest

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_client(request: Request) -> ModelClient:
    """The model-service client: set by service.py when mounted, else BACKSTORY_MODEL_URL's."""
    client = getattr(request.app.state, "client", None)
    if client is None:
        client = request.app.state.client = standalone_client(get_settings())
    return client


def standalone_client(settings: Settings) -> ModelClient:
    import bentoml

    cached: list = []

    async def factory():
        if not cached:  # connect on first use: fetches the API schema, fails if the service is down
            client = bentoml.AsyncHTTPClient(settings.model_url, server_ready_timeout=0,
                                             timeout=settings.timeout_s)
            cached.append(await client.__aenter__())
        return cached[0]

    return ModelClient(factory)


async def parse_body(request: Request) -> GenerateRequest:
    """The request from a JSON body or from form fields (urlencoded or multipart)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(422, "the JSON body must be an object")
    elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        # An empty optional field from an HTML form means "use the default".
        data = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
    else:
        raise HTTPException(415, "send JSON, form-urlencoded or multipart form data")
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as e:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(e.errors(include_url=False), body=None) from None


Client = Annotated[ModelClient, Depends(get_client)]
Body = Annotated[GenerateRequest, Depends(parse_body)]
