"""The two engines behind the grammar's `Source`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")


class HypothesisSource:
    """Draws from Hypothesis' `data()`: shrinkable, replayable from its database."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def pick(self, options: Sequence[T]) -> T:
        index: int = self._data.draw(st.integers(0, len(options) - 1))
        return options[index]

    def number(self, low: int, high: int) -> int:
        result: int = self._data.draw(st.integers(low, high))
        return result

    def text(self, max_len: int) -> str:
        result: str = self._data.draw(st.text(max_size=max_len))  # lone surrogates excluded
        return result

    def raw(self, max_len: int) -> bytes:
        result: bytes = self._data.draw(st.binary(max_size=max_len))
        return result


class BytesSource:
    """Reads choices from a fuzzer's byte string (atheris' FuzzedDataProvider)."""

    def __init__(self, provider: Any) -> None:
        self._fdp = provider

    def pick(self, options: Sequence[T]) -> T:
        index: int = self._fdp.ConsumeIntInRange(0, len(options) - 1)
        return options[index]

    def number(self, low: int, high: int) -> int:
        result: int = self._fdp.ConsumeIntInRange(low, high)
        return result

    def text(self, max_len: int) -> str:
        # lone surrogates come in through grammar.damage, where they are meant to
        result: str = self._fdp.ConsumeUnicodeNoSurrogates(self._fdp.ConsumeIntInRange(0, max_len))
        return result

    def raw(self, max_len: int) -> bytes:
        result: bytes = self._fdp.ConsumeBytes(self._fdp.ConsumeIntInRange(0, max_len))
        return result
