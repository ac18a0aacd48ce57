"""Who may subscribe and publish: token claims combined with channel policy.

Pure decisions returning a refusal reason, or None when allowed.
"""

from __future__ import annotations

from collections.abc import Callable

from switchboard.contract.channels import matches_any
from switchboard.contract.settings import ChannelPolicy
from switchboard.contract.tokens import Claims

PolicyLookup = Callable[[str], ChannelPolicy]


def _has_role(claims: Claims, roles: list[str]) -> bool:
    return not roles or any(role in claims.roles for role in roles)


def subscribe_refusal(claims: Claims, channel: str, policy: ChannelPolicy) -> str | None:
    if claims.channels is not None and not matches_any(channel, claims.channels):
        return f"token does not allow subscribing to '{channel}'"
    if not _has_role(claims, policy.subscribe_roles):
        return f"subscribing to '{channel}' needs one of roles {policy.subscribe_roles}"
    return None


def publish_refusal(claims: Claims, channel: str, policy: ChannelPolicy) -> str | None:
    if not policy.client_publish:
        return f"clients may not publish to '{channel}'"
    if claims.publish is not None and not matches_any(channel, claims.publish):
        return f"token does not allow publishing to '{channel}'"
    if not _has_role(claims, policy.publish_roles):
        return f"publishing to '{channel}' needs one of roles {policy.publish_roles}"
    return None
