"""Grammar-driven fuzzing of the core with Hypothesis (bounded: a fixed number of inputs).

Each example runs a short sequence of client frames and backend messages
through one Session and one hub; see tests/fuzz/harness.py for the promises
checked. Hypothesis shrinks a failure to a small input and keeps it in its
database; copy such inputs into tests/fuzz/corpus when fixed.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Core
from tests.fuzz.sources import HypothesisSource

CORE = Core()  # one hub for all examples: its topics are set up once

FUZZ = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,  # CI sees the same inputs every run; the atheris run explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@FUZZ
@given(st.data())
def test_every_input_gets_a_defined_answer(data: Any) -> None:
    source = HypothesisSource(data)
    for _ in range(data.draw(st.integers(1, 4))):
        CORE.run(source)
