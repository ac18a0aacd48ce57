"""The composition root: the `switchboard` command, dev mode, the one launcher of
local nats-server and edge processes, and the build-time generators."""
