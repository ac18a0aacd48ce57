"""The wire's fixed spellings, and NDJSON framing: what the edge joins, clients split."""

from __future__ import annotations

import json

import pytest

from switchboard.contract.wire import (
    BEARER_PREFIX,
    SUBPROTOCOL,
    bearer_authorization,
    bearer_subprotocol,
    join_frames,
    split_frames,
)


def test_the_spellings_of_design_section_2() -> None:
    assert SUBPROTOCOL == "switchboard.v1"
    assert bearer_subprotocol("T1") == "bearer.T1"
    assert bearer_subprotocol("T1").startswith(BEARER_PREFIX)
    assert bearer_authorization("T2") == "Bearer T2"


@pytest.mark.parametrize(
    "frames",
    [
        [b'{"type":"welcome","payload":{}}'],
        [b'{"type":"event","payload":{"data":"a\\nb"}}', b'{"type":"ack","id":"1"}'],
        [b'{"type":"event","payload":{"data":"\xc3\xa9t\xc3\xa9"}}'] * 3,
    ],
)
def test_split_undoes_join(frames: list[bytes]) -> None:
    joined = join_frames(frames)
    assert [line.encode() for line in split_frames(joined)] == frames
    assert split_frames(joined.decode()) == split_frames(joined)
    assert all(isinstance(json.loads(line), dict) for line in split_frames(joined))


def test_one_frame_is_sent_as_it_is() -> None:
    assert join_frames([b"{}"]) == b"{}"
