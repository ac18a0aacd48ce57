#!/usr/bin/env python3
"""The fuzz target shared by atheris and the corpus replay.

An input is either readable or raw choices:
- `T<text>`: a client frame, given as UTF-8 text, straight to the Session;
- `B<body>`: a backend message body on a plain channel, `S<body>` on a
  history channel, `P<body>` on a presence feed;
- anything else: choices for the grammar (tests/fuzz/grammar.py) through
  atheris' FuzzedDataProvider.
Readable inputs let the kept corpus hold hand-written seeds that say what they are.

Run it as a script (libFuzzer's `-merge=1` starts it again by its path), with
the venv's python first on PATH:

    PATH=.venv/bin:$PATH tests/fuzz/target.py NEW_DIR tests/fuzz/corpus -max_total_time=300
    PATH=.venv/bin:$PATH tests/fuzz/target.py -merge=1 MERGED_DIR tests/fuzz/corpus NEW_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fuzz.harness import Core

_core: Core | None = None


def core() -> Core:
    """Imported late: atheris must instrument edge.* before anything imports it."""
    global _core
    if _core is None:
        from tests.fuzz.harness import Core

        _core = Core()
    return _core


def run_input(data: bytes, provider: Any = None) -> None:
    """Run one input; raises on a broken promise (or an escaped exception)."""
    target = core()
    mark, rest = data[:1], data[1:]
    if mark == b"T":
        target.client(rest.decode("utf-8", "surrogateescape"))  # any str at all
    elif mark in (b"B", b"S"):
        target.backend(rest, {"Sb-From": "bot"}, stored=mark == b"S")
    elif mark == b"P":
        target.presence(rest)
    elif provider is not None:
        from tests.fuzz.sources import BytesSource

        target.run(BytesSource(provider(data)))


def main() -> None:
    """`python -m tests.fuzz.target [libFuzzer flags] CORPUS_DIR...` (needs atheris)."""
    import atheris

    with atheris.instrument_imports(include=["edge", "switchboard"]):
        core()

    def one_input(data: bytes) -> None:
        run_input(data, atheris.FuzzedDataProvider)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script
    main()
