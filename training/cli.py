"""How our command lines fail: a clear one-line message and exit status 2, no traceback."""

import sys
from collections.abc import Callable


def run_cli(body: Callable[[], object]) -> int:
    try:
        body()
    except ValueError as e:  # bad config, missing data, bad settings: the user's to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
