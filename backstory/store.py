"""`python -m backstory.store`: the served model into the BentoML model store, so a Bento packs it.

A fine-tune is an adapter on a base converted on this machine; a Bento and its container must
start without the package registry or our cache. So the served model goes into the model store
under a tag: a full model as one transformers folder; an adapter as it is, with its base in a
`base/` folder beside it, so the Bento serves it as `make serve` does (on the CPU the adapter
stays unmerged beside the int4 base: weights.load_weights). service.py declares that tag
(BACKSTORY_MODEL) as the model service's model, `bentoml build` packs it into the Bento, and the
Bento serves it by tag (bentofile.yaml sets BACKSTORY_MODEL). `make build` does all of it.

    python -m backstory.store                 # the served default -> backstory-model:<digest>
"""

import argparse
import hashlib
import sys
from pathlib import Path

NAME = "backstory-model"
BASE_FOLDER = "base"  # an adapter's base, beside it in its stored folder


def is_store_tag(ref: str) -> bool:
    """`name:version` (version may be `latest`): not a folder, not a Hub id (`org/name`)."""
    return ":" in ref and "/" not in ref and not Path(ref).exists()


def digest(folder: Path, base: str) -> str:
    """Names the stored version after what it is made of: the same inputs, the same tag."""
    h = hashlib.sha256(base.encode())
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def base_of(path: str, base: str = "") -> str:
    """What an adapter applies to ("" for a full model); the packaged base with its sha256."""
    from backstory.base import GGUF_SHA256, PACKAGED_BASE
    from backstory.weights import adapter_base, is_adapter

    if not is_adapter(path):
        return ""
    name = adapter_base(path, base)
    return f"{name}@{GGUF_SHA256}" if name == PACKAGED_BASE else name


def save(model: str, base: str = "", name: str = NAME) -> str:
    """The served model in the store as `name:<digest>` (kept if it is there already)."""
    import shutil

    import bentoml
    import torch
    from transformers import AutoModelForCausalLM

    from backstory.weights import adapter_base, load_model, resolve_model

    path = resolve_model(model)
    base_id = base_of(path, base)
    tag = f"{name}:{digest(Path(path), base_id)}"
    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        pass
    metadata = {"source": model, "base": base_id or "none"}
    with bentoml.models.create(tag, metadata=metadata, labels={"project": "backstory"}) as bm:
        if base_id:
            shutil.copytree(path, bm.path, dirs_exist_ok=True)
            folder = resolve_model(adapter_base(path, base))
            # In its own dtype (the packaged base's bfloat16): its 4-bit grid kept exactly.
            AutoModelForCausalLM.from_pretrained(folder, dtype="auto").save_pretrained(
                Path(bm.path) / BASE_FOLDER)
        else:
            tokenizer, full = load_model(path, torch.device("cpu"), "float32")
            full.to(torch.float16).save_pretrained(bm.path)
            tokenizer.save_pretrained(bm.path)
    return str(bm.tag)


def main(argv: list[str] | None = None) -> int:
    from backstory.config import DEFAULT_MODEL

    ap = argparse.ArgumentParser(prog="python -m backstory.store", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="Model, adapter folder or the "
                    "packaged base's name.")
    ap.add_argument("--base", default="", help="Base of an adapter (default: the one it names).")
    ap.add_argument("--name", default=NAME, help="Model name in the store.")
    args = ap.parse_args(argv)
    print(save(args.model, args.base, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
