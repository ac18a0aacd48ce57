"""Token keys from an identity provider's JWKS URL: cached, refreshed, rotated live.

The keys live in memory and are looked up synchronously by `TokenVerifier` (by the
token's `kid`). The network is only touched here, off the event loop:

- at start (`load`), then every `refresh_s` (`refresh_forever`): keys the IdP added
  appear, keys it removed stop verifying (tokens verified earlier included);
- when a token names a `kid` we do not have (`prepare`, before an upgrade's
  verification): one fetch for everyone waiting, and at most one per
  `min_interval_s`, so a flood of made-up kids cannot hammer the IdP;
- when the IdP is down or answers garbage, the keys we have keep working; a token
  with an unknown kid is refused (401), never answered with a 5xx.

PyJWT's `PyJWKClient` would do the fetching, but it blocks the calling thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from jwt import PyJWK

log = logging.getLogger("switchboard.edge.jwks")

MAX_BYTES = 1 << 20  # a JWKS is a few KiB; anything this large is not one
ASYMMETRIC = ("RS256", "ES256")


class JwksError(Exception):
    """The URL did not give a usable key set (the keys held so far stay)."""


def fetch_url(url: str, timeout_s: float) -> bytes:
    """GET the key set, or read it for a file:// URL (blocking: run it in a thread)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        body: bytes = answer.read(MAX_BYTES + 1)
    if len(body) > MAX_BYTES:
        raise JwksError(f"larger than {MAX_BYTES} bytes")
    return body


def parse_key_set(body: bytes, algorithms: tuple[str, ...]) -> dict[str, PyJWK]:
    """The signing keys by `kid` that can verify one of `algorithms`; keys without a
    kid, for encryption, symmetric or of unknown types are left out."""
    try:
        document = json.loads(body)
    except ValueError:
        raise JwksError("not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError('not a JWKS (no "keys" list)')
    keys: dict[str, PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC"):
            continue
        try:
            key = PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("JWKS key %r skipped: %s", entry["kid"], exc)
            continue
        if key.algorithm_name in algorithms:
            keys[entry["kid"]] = key
    if not keys:
        raise JwksError(f"no signing key for {', '.join(algorithms)}")
    return keys


class JwksKeys:
    """The IdP's current keys, as `TokenVerifier`'s key set."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: tuple[str, ...] = ASYMMETRIC,
        refresh_s: float = 300.0,
        min_interval_s: float = 10.0,
        timeout_s: float = 5.0,
        fetch: Callable[[str, float], bytes] = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = tuple(a for a in algorithms if a in ASYMMETRIC)
        self.refresh_s = refresh_s
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self.loaded = False  # a key set was read at least once
        self.fetches = 0  # attempts, for tests and logs
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    # -- what the verifier asks (synchronous, in memory) ---------------------

    def key(self, kid: str, algorithm: str) -> Any | None:
        """The key object for `kid` if it verifies `algorithm`, else None. An unknown
        kid met here (a `refresh` frame's token: no await possible) starts a fetch in
        the background, within the same rate limit, so a retry can succeed."""
        key = self._keys.get(kid)
        if key is None:
            self._kick()
            return None
        return key.key if key.algorithm_name == algorithm else None

    def _kick(self) -> None:
        if self._inflight is not None or not self._may_fetch():
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop: nothing to run it
            return
        self._start()

    def has(self, kid: str) -> bool:
        return kid in self._keys

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    # -- fetching (off the event loop) ---------------------------------------

    async def prepare(self, token: str) -> None:
        """Before verifying `token`: if its `kid` is unknown, fetch the key set once,
        unless a fetch ran less than `min_interval_s` ago (then the token is refused
        with the keys we have)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            return  # the verifier says why
        if not isinstance(kid, str) or kid in self._keys:
            return
        if self._inflight is None and not self._may_fetch():
            return
        await self._refresh_shared()

    def _may_fetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self.min_interval_s

    async def _refresh_shared(self) -> None:
        """One fetch however many callers wait; a caller that gives up (its upgrade
        was cancelled) does not cancel it for the others."""
        await asyncio.shield(self._inflight or self._start())

    def _start(self) -> asyncio.Task[None]:
        task = self._inflight = asyncio.create_task(self._refresh())
        task.add_done_callback(self._clear_inflight)
        return task

    def _clear_inflight(self, _: asyncio.Task[None]) -> None:
        self._inflight = None

    async def _refresh(self) -> None:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            body = await asyncio.to_thread(self._fetch, self.url, self.timeout_s)
            keys = parse_key_set(body, self.algorithms)
        except Exception as exc:  # the network, HTTP, the document: keep what we have
            log.warning(
                "JWKS not refreshed (%s: %s); keeping %d key(s)",
                type(exc).__name__,
                exc,
                len(self._keys),
                extra={"url": self.url},
            )
            return
        if set(keys) != set(self._keys):
            log.info(
                "JWKS keys: %s",
                ", ".join(sorted(keys)),
                extra={
                    "url": self.url,
                    "added": sorted(set(keys) - set(self._keys)),
                    "removed": sorted(set(self._keys) - set(keys)),
                },
            )
        self._keys = keys
        self.loaded = True

    async def load(self) -> bool:
        """The first fetch, at start; False (logged) when the IdP did not answer."""
        await self._refresh_shared()
        return self.loaded

    async def refresh_forever(
        self, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    ) -> None:
        """Every `refresh_s` (every `min_interval_s` until a first key set arrived)."""
        while True:
            await sleep(self.refresh_s if self.loaded else self.min_interval_s)
            try:
                await self._refresh_shared()
            except Exception:  # a background loop must outlive any one failure
                log.exception("JWKS refresh failed")
