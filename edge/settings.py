"""The edge's one typed settings object.

Every key can be set from the environment as `SB_EDGE_<KEY>` (lists as JSON,
e.g. `SB_EDGE_ALLOWED_ORIGINS='["https://app.example"]'`). A bad value fails
at start-up with an error that names the variable. The Helm chart's
`values.schema.json` is generated from these models.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyUrl, Field, UrlConstraints, model_validator
from pydantic_settings import SettingsConfigDict

from switchboard.contract.settings import (
    ALGORITHMS,
    Algorithm,
    ChannelPolicy,
    ComponentSettings,
    LogLevel,
    ReplicasSetting,
    load_settings,
)

ENV_PREFIX = "SB_EDGE_"
MIN_API_KEY_LENGTH = 16

# A backend error code worth its own series: a short identifier (label values are
# escaped by the exposition, but a dashboard would rather show plain names).
MetricCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
MAX_METRIC_CODES = 64
# Where token keys come from: an IdP's URL, or a JWKS on disk (a mounted ConfigMap).
JwksUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["https", "http", "file"])]


class EdgeSettings(ComponentSettings):
    """Everything an edge process can be told."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="WebSocket and HTTP port.")
    admin_host: str = Field("0.0.0.0", description="Address the admin port listens on.")
    admin_port: int = Field(
        9090,
        ge=0,
        le=65535,
        description="Admin port: /healthz, /readyz, /metrics and the server API (never "
        "exposed to clients). 0: any free port.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="The server API's keys, one per line (a mounted Secret). Unset: the "
        "server API answers 503.",
    )
    pod_name: str = Field(
        default_factory=socket.gethostname,
        description="This edge's name (pod name).",
        json_schema_extra={"doc_default": "the host name"},
    )
    jetstream_replicas: ReplicasSetting = Field(
        "auto",
        description="Copies of the KV buckets an edge creates (tickets, presence, stats, "
        "channels): 1, 3, 5, or auto (3 on a clustered NATS, else 1). Existing buckets "
        "with fewer are raised.",
    )

    jwt_secret: str | None = Field(None, description="HS256 shared secret.")
    jwt_public_key_file: Path | None = Field(None, description="PEM public key (RS256/ES256).")
    jwt_jwks_url: JwksUrl | None = Field(
        None,
        description=(
            "An identity provider's JWKS (RS256/ES256 keys by `kid`), instead of a PEM key: "
            "https://, or file:// for one on disk (a mounted ConfigMap); read at start, every "
            "`jwt_jwks_refresh_s`, and on an unknown `kid`."
        ),
    )
    jwt_jwks_refresh_s: float = Field(
        300.0, gt=0, description="How often the JWKS is read again (removed keys stop)."
    )
    jwt_jwks_min_interval_s: float = Field(
        10.0,
        ge=0,
        description="At most one JWKS read per this interval for unknown `kid`s.",
    )
    jwt_jwks_timeout_s: float = Field(5.0, gt=0, description="Timeout of one JWKS read.")
    jwt_algorithms: list[Algorithm] = Field(
        default_factory=lambda: list(ALGORITHMS),
        description="Accepted JWT algorithms.",
    )
    jwt_audience: str | None = Field(None, description="Required `aud` (unset: not checked).")
    jwt_issuer: str | None = Field(None, description="Required `iss` (unset: not checked).")
    jwt_leeway_s: float = Field(5.0, ge=0, description="Clock skew tolerated on `exp`.")

    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser Origins allowed (glob). Empty: same host only. '*': any.",
    )
    in_band_refusals: Literal["auto", "always", "never"] = Field(
        "auto",
        description=(
            "Refuse upgrades as a close after 101 (4001/4003/1013), which page JavaScript "
            "can read, instead of an HTTP status: `auto` when the request has an allowed "
            "`Origin` (browsers), `always`, or `never`."
        ),
    )
    max_connections: int = Field(10000, ge=1, description="Connection cap of this edge.")
    new_connections_per_s: float = Field(
        500.0, gt=0, description="Upgrades accepted per second (else 429)."
    )
    new_connections_burst: int = Field(1000, ge=1, description="Burst for new connections.")
    max_message_bytes: int = Field(65536, ge=64, description="Largest client frame (else 1009).")
    max_subscriptions: int = Field(256, ge=1, description="Subscriptions per connection.")
    max_rpcs_in_flight: int = Field(16, ge=1, description="Concurrent RPCs per connection.")
    rate_per_s: float = Field(100.0, gt=0, description="Client messages per second.")
    rate_burst: int = Field(200, ge=1, description="Token-bucket burst.")
    abuse_errors: int = Field(10, ge=1, description="Errors in the window that close with 1008.")
    abuse_window_s: float = Field(10.0, gt=0, description="Window for `abuse_errors`.")
    ping_interval_s: float = Field(30.0, gt=0, description="WebSocket ping interval.")
    ping_timeout_s: float = Field(20.0, gt=0, description="Close a peer silent this long.")
    sse_keepalive_s: float = Field(
        15.0,
        gt=0,
        description="A comment on an idle SSE stream this often (proxies close idle responses).",
    )
    rpc_timeout_ms: int = Field(5000, ge=1, description="Default RPC timeout.")
    rpc_max_timeout_ms: int = Field(30000, ge=1, description="Largest RPC timeout allowed.")
    outbox_max_bytes: int = Field(
        512 * 1024, ge=1024, description="Per-connection outbound buffer; over it, close 1013."
    )
    slow_consumer_grace_s: float = Field(
        2.0, gt=0, description="How long the buffer may stay full before 1013."
    )
    write_delay_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description=(
            "Write window: a connection's frames are held up to this long and sent in one "
            "write (fewer syscalls per delivery, that much more latency). 0: once per "
            "event-loop turn."
        ),
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "uvloop",
        description=(
            "The event loop: uvloop (libuv: ~30 % more handshakes per CPU-second than "
            "Python's own asyncio, docs/benchmarks.md) or asyncio."
        ),
    )
    reconnect_jitter_ms: int = Field(
        3000, ge=0, description="Upper bound of the random `after_ms` in `reconnect` frames."
    )
    drain_reconnects_per_s: float = Field(
        100.0, gt=0, description="Drain pace when the operator grants none."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="Deadline of a drain; the rest then close at once."
    )
    drain_grant_timeout_s: float = Field(
        1.0, gt=0, description="How long to wait for the operator's drain grant."
    )
    channels_snapshot_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description=(
            "How long start-up waits for the Channels (`sb_channels`) and the revocations "
            "(`sb_revoked`) before the client port opens; past it the edge serves (the "
            "default policy, no revocations) and `/readyz` answers 503 until they are read."
        ),
    )
    stats_interval_s: float = Field(2.0, gt=0, description="How often stats go to `sb_edges`.")
    stats_ttl_s: float = Field(
        10.0, gt=0, description="`sb_edges` entry lifetime: a dead edge vanishes after this."
    )
    presence_ttl_s: float = Field(
        15.0, ge=2, description="`sb_presence` entry lifetime: a dead edge's users vanish after it."
    )
    revocation_ttl_s: float = Field(
        86400.0,
        ge=60,
        description=(
            "How long a revocation (`POST /api/v1/users/{user}/revoke`) is kept in "
            "`sb_revoked`: at least your tokens' lifetime. Read when the bucket is created."
        ),
    )
    resume_secret: str | None = Field(
        None, description="Signs resume tokens (cluster-wide); unset: the HS256 JWT secret."
    )
    resume_ttl_s: float = Field(120.0, gt=0, description="How long a resume token is valid.")
    ticket_ttl_s: int = Field(30, ge=1, description="Lifetime of a `?ticket=`.")
    drain_secret_file: Path | None = Field(
        None,
        description=(
            "Where the edge writes (0600) the secret `POST /v1/drain` requires; "
            "`switchboard drain` reads it."
        ),
        json_schema_extra={"doc_default": "`<temp dir>/switchboard-edge-<port>.drain`"},
    )
    default_channel: ChannelPolicy = Field(default_factory=ChannelPolicy)
    expose_publisher: bool = Field(True, description="Events carry `from` (publisher id).")
    demo_page: bool = Field(True, description="Serve the demo chat page at `/`.")
    dev_tokens: bool = Field(
        False, description="Serve GET /dev/token (mints tokens; `switchboard dev` only)."
    )
    metrics_error_codes: list[MetricCode] = Field(
        default_factory=list,
        max_length=MAX_METRIC_CODES,
        description=(
            "Backend `Sb-Error` codes counted by name in `sb_edge_errors_total` "
            "(any other backend code counts as `other`)."
        ),
    )
    log_level: LogLevel = "INFO"

    def api_keys(self) -> list[str]:
        """The keys in `api_keys_file` (read on each call: a rotated Secret applies on restart)."""
        if self.api_keys_file is None:
            return []
        lines = self.api_keys_file.read_text().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    @model_validator(mode="after")
    def _api_keys_readable(self) -> EdgeSettings:
        if self.api_keys_file is not None:
            try:
                keys = self.api_keys()
            except OSError as exc:
                raise ValueError(f"{ENV_PREFIX}API_KEYS_FILE: {exc.strerror}") from None
            if any(len(key) < MIN_API_KEY_LENGTH for key in keys):
                raise ValueError(
                    f"{ENV_PREFIX}API_KEYS_FILE: every key needs {MIN_API_KEY_LENGTH}+ characters"
                )
        return self

    @model_validator(mode="after")
    def _needs_a_key(self) -> EdgeSettings:
        public = {
            f"{ENV_PREFIX}{name.upper()}": getattr(self, name)
            for name in ("jwt_public_key_file", "jwt_jwks_url")
        }
        chosen = [name for name, value in public.items() if value is not None]
        if self.jwt_secret is None and not chosen:
            raise ValueError(
                f"set {ENV_PREFIX}JWT_SECRET or one of {', '.join(public)} "
                "(no way to verify tokens)"
            )
        if len(chosen) > 1:
            raise ValueError(f"set one of {', '.join(chosen)}, not several")
        if chosen and set(self.jwt_algorithms) <= {"HS256"}:
            raise ValueError(f"{chosen[0]} needs RS256 or ES256 in {ENV_PREFIX}JWT_ALGORITHMS")
        if self.rpc_timeout_ms > self.rpc_max_timeout_ms:
            raise ValueError(f"{ENV_PREFIX}RPC_TIMEOUT_MS exceeds {ENV_PREFIX}RPC_MAX_TIMEOUT_MS")
        return self


def load_edge_settings(**overrides: Any) -> EdgeSettings:
    return load_settings(EdgeSettings, ENV_PREFIX, overrides)
