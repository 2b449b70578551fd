"""The anchor of the benchmark: llama.cpp on the same weights, behind the baseline's HTTP shape.

    python -m bench.anchor --model DIR --port 8002

`llama_cpp.Llama` (llama-cpp-python, built from source: `make bench-anchor`) on the packaged
GGUF file (the Q4_1 SmolLM2 that backstory/base.py converts for us), with as many threads as our
torch uses. DIR is the converted base: its tokenizer builds the prompt, so llama.cpp reads the
same prompt tokens as ours and the baseline, and decodes the same way. DIR may be a LoRA adapter on
that base (the served default): llama.cpp then applies it unmerged, as ours does, from a LoRA
GGUF file converted once into .cache/gguf (bench/lora_gguf.py).

Sampling as ours: temperature, top-k, top-p, repetition penalty and the request's seed; no
min-p or typical-p (llama.cpp's defaults add min-p 0.05). Two differences are llama.cpp's own:
its repetition penalty looks at the last 64 generated tokens, not the prompt, and it draws from
its own RNG, so a seed gives a different story than ours (and not always the same one twice:
a prompt read from llama.cpp's prefix cache gives logits a rounding apart from one read whole,
enough to move a sampled draw; the cache stays, as in llama.cpp's server, since it saves
reading the shared system turn again). Every end-of-generation token is
suppressed and exactly `max_new_tokens` are generated, as the bench asks (min = max).
"""

import threading
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI

from backstory.base import CACHE, GGUF_SHA256, gguf_path, sha256
from backstory.config import Settings
from backstory.text import clean_backstory, opening
from backstory.weights import adapter_base, is_adapter, resolve_model
from bench.baseline import GenerateBody, main, serving_app
from bench.lora_gguf import lora_gguf
from bench.naive import Output, encode_prompt

N_CTX = 2048  # prompt (about 60-170 tokens) + 200 new ones, with room to spare


def runs_on(model: Path) -> bool:
    """The anchor's weights are the packaged base's: that base, or an adapter on it."""
    if is_adapter(str(model)):
        model = Path(resolve_model(adapter_base(str(model))))
    return model.resolve() == CACHE.resolve()


def available() -> str | None:
    """None when the anchor can run, else why not (the bench logs it and goes on without)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "not installed (make bench-anchor)"
    except OSError as e:  # the wheel is there but its shared library does not load
        return f"llama_cpp does not load: {e}"
    try:
        gguf_path()
    except RuntimeError as e:
        return str(e)
    return None


class LlamaGenerator:
    """One llama.cpp context and the prompt's tokenizer; one request at a time."""

    def __init__(self, model_dir: str, settings: Settings | None = None):
        import llama_cpp
        import torch
        from transformers import AutoTokenizer

        self.settings = settings or Settings(model=model_dir)
        self.gguf = gguf_path()
        if sha256(self.gguf) != GGUF_SHA256:
            raise RuntimeError(f"{self.gguf} is not the pinned GGUF file (sha256 differs)")
        self.threads = self.settings.threads or torch.get_num_threads()  # as many as ours
        self.lora = (lora_gguf(Path(model_dir), CACHE, CACHE.parent.parent / "gguf")
                     if is_adapter(model_dir) else None)
        self.llm = llama_cpp.Llama(model_path=str(self.gguf), n_ctx=N_CTX, seed=0,
                                   n_threads=self.threads, n_threads_batch=self.threads,
                                   lora_path=self.lora and str(self.lora), verbose=False)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        vocab = self.llm._model.vocab  # noqa: SLF001 (no public accessor for the vocab)
        self.eog = np.array([t for t in range(self.llm.n_vocab())
                             if llama_cpp.llama_vocab_is_eog(vocab, t)], dtype=np.intc)
        self.version = llama_cpp.__version__
        # llama.cpp's own server with one slot (`-np 1`) also runs one request at a time, and a
        # Llama (one context, one KV cache) is not safe to share between threads: FastAPI's
        # threadpool would otherwise call it concurrently.
        self.lock = threading.Lock()

    def no_end(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """A logits processor: no end-of-generation token may be drawn (min_new_tokens)."""
        scores[self.eog] = -np.inf
        return scores

    def generate(self, name: str, description: str, new_tokens: int, seed: int,
                 temperature: float | None = None) -> Output:
        """Exactly `new_tokens` tokens (or as many as the context leaves) after the served
        prompt. Llama.generate reuses the KV cache of the longest common prompt prefix, as
        llama.cpp's server does (the system turn is shared by every request)."""
        s, started = self.settings, time.perf_counter()
        ids = encode_prompt(self.tokenizer, s, name, description)[-N_CTX + 1:]
        n = max(1, min(new_tokens, N_CTX - len(ids)))
        with self.lock:
            t0 = time.perf_counter()
            self.llm.set_seed(seed)
            stream = self.llm.generate(
                ids, top_k=s.top_k, top_p=s.top_p, min_p=0.0, typical_p=1.0,
                temp=temperature or s.temperature, repeat_penalty=s.repetition_penalty,
                logits_processor=[self.no_end])
            new = [token for _, token in zip(range(n), stream)]  # stops before token n + 1
            stream.close()
            generate_seconds = time.perf_counter() - t0
        opener = opening(name, description, s.opener, s.restate)
        text = clean_backstory(self.tokenizer.decode(new, skip_special_tokens=True), opener)
        return Output(backstory=text, tokens=len(new), seed=seed,
                      seconds=time.perf_counter() - started, generate_seconds=generate_seconds)


def create_app(model_dir: str) -> FastAPI:
    generator = LlamaGenerator(model_dir)

    def generate(body: GenerateBody, seed: int) -> Output:
        return generator.generate(body.name, body.description, body.max_new_tokens, seed,
                                  body.temperature)

    status = {"server": "llama.cpp", "llama_cpp_python": generator.version,
              "gguf": str(generator.gguf), "lora": generator.lora and str(generator.lora),
              "threads": generator.threads, "n_ctx": N_CTX,
              "slots": 1, "device": "cpu"}
    return serving_app("Backstory anchor (llama.cpp)", Path(generator.gguf).name, generate,
                       status)


if __name__ == "__main__":
    main(create=create_app, description=__doc__)
