"""`python -m training --preset tiny` (see --help): train a model folder from text."""

import argparse
import sys

from transformers import HfArgumentParser

from training.cli import run_cli
from training.config import TrainConfig, preset_defaults


def parse_args(argv: list[str]) -> TrainConfig:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="")
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser(TrainConfig, description=__doc__)
    parser.set_defaults(**preset_defaults(known.preset))
    (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    return cfg


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        from training.train import train

        train(cfg)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
