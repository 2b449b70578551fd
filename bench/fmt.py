"""Number formats and look-ups shared by the report's sections (bench/report*.py)."""

ANCHOR = "llama.cpp"  # the llama.cpp anchor's name in the results (bench/runner.py)


def ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1000:.0f} ms"


def mib(b: float | None) -> str:
    return "n/a" if not b else f"{b / 2**20:.0f} MiB"


def x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def level(results: dict, clients: int) -> dict | None:
    return next((lv for lv in results["levels"] if lv["level"] == clients), None)


def check(ok: bool | None, text: str) -> str:
    mark = "➖" if ok is None else ("✅" if ok else "❌")
    return f"- {mark} {text}"
