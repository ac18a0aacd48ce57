"""Every NATS name of the contract (DESIGN §6) that is not a per-channel subject.

Subjects of channels, users and RPC methods are built in `switchboard.contract.channels`;
the buckets, control subjects and stream names live here, so that the edge, the
operator, the CLI and the permission lists (`switchboard.contract.permissions`) read the
same spelling.
"""

from __future__ import annotations

from datetime import datetime

TICKETS_BUCKET = "sb_tickets"
EDGES_BUCKET = "sb_edges"
CHANNELS_BUCKET = "sb_channels"
PRESENCE_BUCKET = "sb_presence"
REVOKED_BUCKET = "sb_revoked"  # user → tokens issued before this moment are refused
BUCKETS = (TICKETS_BUCKET, EDGES_BUCKET, CHANNELS_BUCKET, PRESENCE_BUCKET, REVOKED_BUCKET)
STREAM_PREFIX = "SB_CH_"  # a Channel with history keeps it in the stream SB_CH_<name>


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a KV bucket."""
    return f"KV_{bucket}"


def stream_epoch(created: datetime | None, stream: str) -> str:
    """A history stream's epoch (DESIGN §3, §7): its creation time, so it changes whenever
    the stream was recreated and its offsets started again. The edge hands it out
    with offsets and the operator shows it in a Channel's status: both read it here.
    A server that reports no creation time gets the stream's name (never changes)."""
    return created.isoformat() if created is not None else stream


def control_subject(prefix: str, pod: str) -> str:
    """Commands to one edge (drain, rate): only the operator may publish here."""
    return f"{prefix}.edge.{pod}.ctl"


def drain_subject(prefix: str) -> str:
    """Edges request a drain pace here; the operator answers."""
    return f"{prefix}.operator.drain"


def presence_feed_prefix(prefix: str) -> str:
    """Ready-made `join`/`leave` frames of presence channels, from edge to edges."""
    return f"{prefix}.presence"
