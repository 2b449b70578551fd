"""Shared fixtures: a tiny random chat model built in seconds (the default's architecture, llama,
with a chat template), and a real `bentoml serve` on it."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.update(HF_HUB_OFFLINE="1", BENTOML_DO_NOT_TRACK="true", TOKENIZERS_PARALLELISM="false")

from bench.servers import bentoml_serve  # noqa: E402
from bench.tiny import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory) -> Iterator[str]:
    """The whole stack (`bentoml serve service:Gateway`) on the tiny model; yields its URL."""
    log = tmp_path_factory.mktemp("logs") / "bentoml-serve.log"
    with bentoml_serve(str(tiny_model), log_path=log) as url:
        yield url
