"""The contract every Switchboard component shares (../shared/DESIGN.md in code).

Pure: no asyncio, websockets, nats, kopf or aiohttp here, so the edge, the
operator, the client SDK and the CLI can all depend on it and it on none of them.
"""
