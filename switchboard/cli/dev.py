"""`switchboard dev`: the whole tier on one machine, no cluster, no Docker.

Starts a nats-server with JetStream on free ports and N edge processes that
share it, prints a token and the URLs, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from switchboard.cli.launch import EdgeProcess, free_port, port_is_free, stop_all
from switchboard.cli.natsserver import NatsServer
from switchboard.contract.tokens import mint_token
from switchboard.contract.wire import BEARER_PREFIX, SUBPROTOCOL, WS_PATH
from switchboard.jetstream import DEV_STATE


def run_dev(ports: list[int], host: str = "127.0.0.1", secret: str | None = None) -> int:
    secret = secret or os.environ.get("SB_EDGE_JWT_SECRET") or secrets.token_urlsafe(32)
    origins = [f"http://{name}:{p}" for p in ports for name in ("localhost", "127.0.0.1", host)]
    busy = [p for p in ports if not port_is_free(host, p)]
    if busy:
        print(f"port(s) {busy} already in use on {host}: pick others with --ports", file=sys.stderr)
        return 2
    edges: list[EdgeProcess] = []
    nats = NatsServer(auth=True).start()  # the roles and permissions a cluster runs with
    api_key = secrets.token_urlsafe(24)
    keys_file = Path(tempfile.mkdtemp(prefix="switchboard-dev-")) / "api-keys"
    keys_file.write_text(api_key + "\n")
    keys_file.chmod(0o600)
    admin_ports = _admin_ports(host, len(ports))
    try:
        for index, (port, admin_port) in enumerate(zip(ports, admin_ports, strict=True), start=1):
            settings = {
                "jetstream_replicas": 1,  # one server: one copy of everything
                "dev_tokens": "true",
                "allowed_origins": json.dumps(sorted(set(origins))),
                "admin_port": admin_port,
                "api_keys_file": keys_file,
            }
            edge = EdgeProcess.on(
                nats, f"edge-{index}", jwt_secret=secret, port=port, host=host, settings=settings
            )
            edges.append(edge.spawn())  # output to ours, next to the banner
        for edge in edges:
            edge.wait_ready(20)
        token = mint_token(secret, "dev-user", ttl_s=24 * 3600)
        # `switchboard channel` does the operator's job here: it gets the operator's role
        state = json.dumps({"nats_url": nats.url_for("operator"), "ports": ports})
        fd = os.open(DEV_STATE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(state)
        print(_banner(ports, admin_ports, nats, secret, token, api_key), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        # Ctrl-C even when started with SIGINT ignored or blocked (a script's background job)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        while all(edge.alive for edge in edges):
            time.sleep(0.5)
        print("an edge exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(edges, 15)
        nats.stop()
        DEV_STATE.unlink(missing_ok=True)
        shutil.rmtree(keys_file.parent, ignore_errors=True)
        print("switchboard dev stopped", file=sys.stderr)


def _self_command() -> str:
    """How the user can run this same `switchboard` (e.g. `.venv/bin/switchboard`)."""
    me = os.path.abspath(sys.argv[0])
    if os.path.basename(me) != "switchboard" or shutil.which("switchboard") == me:
        return "switchboard"
    return os.path.relpath(me)


def _admin_ports(host: str, count: int) -> list[int]:
    """9090, 9091, ... where free (the chart's admin port), else any free port."""
    return [p if port_is_free(host, p) else free_port() for p in range(9090, 9090 + count)]


def _banner(
    ports: list[int], admin_ports: list[int], nats: NatsServer, secret: str, token: str, key: str
) -> str:
    cmd = _self_command()
    admins = "\n".join(
        f"  admin       http://localhost:{p}/   (edge-{i}: /metrics, /readyz, server API)"
        for i, p in enumerate(admin_ports, 1)
    )
    pages = "\n".join(
        f"  demo page   http://localhost:{p}/   (edge-{i})" for i, p in enumerate(ports, 1)
    )
    sockets = "\n".join(f"  websocket   ws://localhost:{p}{WS_PATH}" for p in ports)
    return f"""
Switchboard dev tier is up (Ctrl-C stops everything)
{pages}
{sockets}
{admins}
  api key     {key}
  nats        {nats.address}   (monitoring {nats.monitor_url})
  backend     {nats.url}
              (a backend's NATS URL: publish to sb.ch.> / sb.user.>, answer sb.rpc.>)
  jwt secret  {secret}
  dev token   {token}   (user dev-user, 24 h)

Try it from a terminal:
  export SB_TOKEN={token}
  {cmd} client --url ws://localhost:{ports[-1]}{WS_PATH} subscribe chat:lobby
  {cmd} client --url ws://localhost:{ports[0]}{WS_PATH} publish chat:lobby '{{"text":"hi"}}'
  wscat -c ws://localhost:{ports[-1]}{WS_PATH} -s {SUBPROTOCOL} -s {BEARER_PREFIX}$SB_TOKEN
  {cmd} channel apply -f deploy/examples/channel-chat.yaml   (policy, live on every edge)
  curl -H 'Authorization: apikey {key}' -d '{{"channel":"chat:lobby","data":"hi"}}' \\
       http://localhost:{admin_ports[0]}/api/v1/publish
"""
