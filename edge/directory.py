"""The channel policies this edge enforces, kept current from `sb_channels`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from pydantic import ValidationError

from switchboard.contract.channel_config import ChannelSpec, governing, governing_name, stream_name
from switchboard.contract.settings import ChannelPolicy

log = logging.getLogger("switchboard.edge.directory")


class ChannelDirectory:
    """Channel name → policy; channels no Channel governs get the default."""

    def __init__(self, default: ChannelPolicy) -> None:
        self._default = default
        self._policies: dict[str, ChannelPolicy] = {}
        self.specs: dict[str, ChannelSpec] = {}
        self.published: Counter[str] = Counter()  # per governing Channel, since start
        # set once every entry the bucket held when the watch began is applied: before,
        # a channel's policy may still be the default (no history, no recovery)
        self.complete = False

    def apply(self, name: str, value: bytes | None) -> None:
        """An update from the KV bucket: a spec, or None when the Channel is gone."""
        if value is None:
            self._policies.pop(name, None)
            self.specs.pop(name, None)
            log.info("channel config removed", extra={"channel": name})
            return
        try:
            spec = ChannelSpec.from_json(value)
        except ValidationError as exc:
            log.warning(
                "ignored invalid channel config", extra={"channel": name, "error": str(exc)}
            )
            return
        self.specs[name] = spec
        self._policies[name] = spec.policy()
        log.info("channel config applied", extra={"channel": name})

    def mark_complete(self) -> None:
        """The bucket's entries at the start of the watch have all been applied."""
        if not self.complete:
            self.complete = True
            log.info("channel config read", extra={"channels": len(self.specs)})

    def policy_for(self, channel: str) -> ChannelPolicy:
        return governing(channel, self._policies) or self._default

    def stream_for(self, channel: str) -> str | None:
        """The history stream of the Channel governing `channel`, if it keeps history."""
        name = governing_name(channel, self.specs)
        if name is None or self.specs[name].history is None:
            return None
        return stream_name(name)

    def count_publish(self, channel: str) -> None:
        name = governing_name(channel, self.specs)
        if name is not None:
            self.published[name] += 1

    def usage(self, subscriptions: Iterable[str]) -> dict[str, dict[str, int]]:
        """Per Channel resource: this edge's subscribers and client publishes so far,
        for the operator's Channel status."""
        subscribers: Counter[str] = Counter()
        for channel in subscriptions:
            name = governing_name(channel, self.specs)
            if name is not None:
                subscribers[name] += 1
        return {
            name: {"subscribers": subscribers[name], "published": self.published[name]}
            for name in self.specs
        }
