"""Token ids to text deltas, as a story grows: whole characters only, cut at a stop marker."""

from collections.abc import Callable

from backstory.sampling import RowSettings
from backstory.text import SPECIAL_STOPS, STOP_MARKERS, find_stop


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
