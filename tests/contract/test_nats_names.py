"""Every NATS name lives in the contract modules (switchboard/contract/names.py and
switchboard/contract/channels.py), where switchboard/contract/permissions.py derives each role's
permissions from them; a subject spelled anywhere else could ship without one. The
edge, the operator, the CLI (all of `switchboard/`) and the benchmarks are read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
CONTRACT = {
    "switchboard/contract/names.py",
    "switchboard/contract/channels.py",
    "switchboard/contract/permissions.py",
}
BUCKETS = {"sb_tickets", "sb_edges", "sb_channels", "sb_presence", "sb_revoked"}
KINDS = r"(ch|user|rpc|edge|operator|presence)"
# a whole name: JetStream's own subjects and streams, ours, or a subject with the
# default prefix spelled out ("sb.ch.bench")
WHOLE = re.compile(rf"^(\$JS\.|\$KV\.|_INBOX\.|SB_CH_|KV_|sb\.{KINDS}\.)")
# the fixed part of an f-string name: f"{prefix}.ch.{channel}", f"{p}.edge.{pod}.ctl",
# f"KV_{bucket}"
PART = re.compile(rf"^(\.{KINDS}(\.|$)|KV_|SB_CH_)")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            ids.add(id(first.value))
    return ids


def nats_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    found = []
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):  # breadth first: an f-string before its parts
        if isinstance(node, ast.JoinedStr):
            parts = [p for p in node.values if isinstance(p, ast.Constant)]
            skip.update(id(p) for p in parts)
            hits = [p.value for p in parts if isinstance(p.value, str) and PART.match(p.value)]
            found += [f"{where}:{node.lineno}: f-string {hit!r}" for hit in hits]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if id(node) not in skip and (text in BUCKETS or WHOLE.match(text)):
                found.append(f"{where}:{node.lineno}: {text!r}")
    return found


def test_no_nats_name_is_spelled_outside_the_contract() -> None:
    sources = [
        p
        for folder in ("edge", "switchboard", "operator/switchboard_operator", "bench")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if str(p.relative_to(ROOT)) not in CONTRACT
    ]
    assert len(sources) > 40
    found = [hit for path in sources for hit in nats_literals(path)]
    assert found == [], "use switchboard.contract.names / switchboard.contract.channels"


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = ROOT / "tests" / "contract" / "_nats_literal_sample.py"
    sample.write_text(
        'BUCKET = "sb_tickets"\nS = f"{prefix}.edge.{pod}.ctl"\n'
        'K = f"KV_{bucket}"\nB = "sb.ch.bench"\nNOT = "see sb.ch.> in the docs"\n'
    )
    try:
        assert len(nats_literals(sample)) == 4
    finally:
        sample.unlink()
