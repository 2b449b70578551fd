"""Token ids to text deltas, as a story grows: whole characters only, cut at a stop marker."""

from collections.abc import Callable

import torch

from backstory.sampling import RowSettings
from backstory.text import SPECIAL_STOPS, STOP_MARKERS, find_stop

StepCallback = Callable[[list[int]], None]  # called with each step's new token of every row
Emit = Callable[[int, str], None]  # called with (row, new text) as a row's story grows


class TextStream:
    """One row's tokens as text deltas: waits out half characters, ends the row (sets its
    cancel event) at its end-of-text or where the model starts a new header."""

    def __init__(self, tokenizer, row: RowSettings, opener: str, emit: Callable[[str], None]):
        self.tokenizer, self.row, self.opener, self.emit = tokenizer, row, opener, emit
        self.ids: list[int] = []
        self.sent = len(opener)
        if opener:
            emit(opener)

    def push(self, token: int) -> None:
        if self.row.cancelled.is_set() or token == self.tokenizer.eos_token_id:
            self.row.cancelled.set()  # the row is done either way: nothing more to send
            return
        self.ids.append(token)
        text = self.opener + self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        stop = find_stop(text, SPECIAL_STOPS if self.row.free else STOP_MARKERS)
        if stop is not None:
            text = text[:stop]
            self.row.cancelled.set()
        if len(text) > self.sent:
            self.emit(text[self.sent:])
            self.sent = len(text)


class Detokenizer:
    """Each step's tokens of a generate() batch to their rows' TextStreams."""

    def __init__(self, tokenizer, rows: list[RowSettings], openers: list[str], emit: Emit):
        self.streams = [TextStream(tokenizer, row, opener, lambda text, i=i: emit(i, text))
                        for i, (row, opener) in enumerate(zip(rows, openers))]

    def __call__(self, step_tokens: list[int]) -> None:
        for stream, token in zip(self.streams, step_tokens):
            stream.push(token)


class StepStreamer:
    """transformers streamer protocol: put() gets the prompt once, then each step's tokens."""

    def __init__(self, on_step: StepCallback):
        self.on_step, self.prompt_seen = on_step, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_step(value.reshape(-1).tolist())

    def end(self) -> None:
        pass
