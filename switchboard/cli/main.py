"""The `switchboard` command: dev, edge, operator, cleanup, token, client, channel, probe and the
generators (settings, crds, chart-schema)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.settings import load_edge_settings
from switchboard.contract.errors import SettingsError
from switchboard.contract.wire import WS_PATH

if TYPE_CHECKING:
    from switchboard.contract.channel_config import ChannelSpec

DEFAULT_URL = f"ws://localhost:8080{WS_PATH}"  # an edge of `switchboard dev`


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _labels(value: str) -> dict[str, str]:
    """`k=v,k2=v2` → {k: v, k2: v2}."""
    pairs = [item.partition("=") for item in _csv(value)]
    if not pairs or any(not key or sep != "=" for key, sep, _ in pairs):
        raise argparse.ArgumentTypeError(f"expected key=value[,key=value...], got {value!r}")
    return {key: val for key, _, val in pairs}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run nats-server and two edges locally (embedded default)")
    dev.add_argument("--ports", type=lambda v: [int(p) for p in _csv(v)], default=[8080, 8081])
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--secret", help="HS256 secret (default: random, or $SB_EDGE_JWT_SECRET)")

    edge = sub.add_parser("edge", help="run one edge (settings from SB_EDGE_* variables)")
    edge.add_argument("--port", type=int)
    edge.add_argument("--host")
    edge.add_argument("--nats-url")
    edge.add_argument("--pod-name")

    op = sub.add_parser("operator", help="run the operator (settings from SB_OPERATOR_*)")
    op.add_argument("--nats-url")
    op.add_argument("--namespace", help="watch one namespace (default: all)")
    op.add_argument("--standalone", action="store_true", default=None, help="no peering")

    clean = sub.add_parser(
        "cleanup", help="delete a release's Channels and EdgePools (helm pre-delete hook)"
    )
    clean.add_argument("--namespace", required=True)
    clean.add_argument(
        "--selector", required=True, type=_labels, help="labels, e.g. app.kubernetes.io/instance=sb"
    )
    clean.add_argument("--timeout", type=float, default=120.0, help="seconds")

    drain = sub.add_parser("drain", help="start this pod's edge drain (preStop hook)")
    drain.add_argument("--port", type=int, default=int(os.environ.get("SB_EDGE_PORT", "8080")))
    drain.add_argument(
        "--secret-file",
        type=Path,
        default=os.environ.get("SB_EDGE_DRAIN_SECRET_FILE"),
        help="the edge's drain secret (default: as the edge, from $SB_EDGE_DRAIN_SECRET_FILE "
        "or the port)",
    )

    probe = sub.add_parser("probe", help="publish/subscribe round trip through an edge")
    probe.add_argument("--url", default=DEFAULT_URL)
    probe.add_argument("--secret", default=os.environ.get("SB_EDGE_JWT_SECRET"))
    probe.add_argument("--token", default=os.environ.get("SB_TOKEN"), help="instead of --secret")
    probe.add_argument("--timeout", type=float, default=10.0, help="seconds")
    probe.add_argument(
        "--nats-url",
        default=os.environ.get("SB_NATS_URL"),
        help="also publish as a backend through NATS (credentials: SB_NATS_USER/PASSWORD...)",
    )

    crds = sub.add_parser("crds", help="write the CRDs generated from the operator's models")
    crds.add_argument("--out", type=Path, help="directory (default: print)")

    schema = sub.add_parser("chart-schema", help="write the chart's values.schema.json")
    schema.add_argument("--out", type=Path, help="file (default: print)")

    authz = sub.add_parser(
        "nats-authorization", help="write the chart's NATS users and permissions (one per role)"
    )
    authz.add_argument("--out", type=Path, help="file (default: print)")

    token = sub.add_parser("token", help="mint an HS256 JWT for development")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--secret", default=os.environ.get("SB_EDGE_JWT_SECRET"))
    token.add_argument("--ttl", type=float, default=3600, help="seconds")
    token.add_argument("--roles", type=_csv)
    token.add_argument("--channels", type=_csv, help="glob patterns the user may subscribe to")
    token.add_argument("--publish", type=_csv, help="glob patterns the user may publish to")

    channel = sub.add_parser("channel", help="apply / delete / list Channel configs (sb_channels)")
    channel.add_argument("--nats-url", help="default: $SB_NATS_URL, else the running dev tier")
    channel_actions = channel.add_subparsers(dest="action", required=True)
    apply_ = channel_actions.add_parser("apply", help="write Channel manifests (YAML)")
    apply_.add_argument("-f", "--filename", required=True, help="YAML file, or - for stdin")
    remove = channel_actions.add_parser("delete", help="remove a Channel config")
    remove.add_argument("name")
    channel_actions.add_parser("list", help="print the Channel configs")

    settings = sub.add_parser("settings", help="print the edge settings reference")
    settings.add_argument("--markdown", action="store_true", help="as the docs' Markdown table")

    client = sub.add_parser("client", help="a terminal client")
    client.add_argument("--url", default=DEFAULT_URL)
    client.add_argument("--token", default=os.environ.get("SB_TOKEN"), help="or $SB_TOKEN")
    actions = client.add_subparsers(dest="action", required=True)
    s = actions.add_parser("subscribe", help="print events of channels until Ctrl-C")
    s.add_argument("channels", nargs="+")
    p = actions.add_parser("publish", help="publish one message (data is JSON or text)")
    p.add_argument("channel")
    p.add_argument("data")
    r = actions.add_parser("rpc", help="call a backend method")
    r.add_argument("method")
    r.add_argument("data", nargs="?", default="null")
    return parser


def _as_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _client(args: argparse.Namespace) -> int:
    from switchboard.client import Client, Closed, SwitchboardError

    if not args.token:
        print("a token is required: --token or $SB_TOKEN", file=sys.stderr)
        return 2
    from websockets.exceptions import InvalidStatus

    try:
        client = await Client.connect(args.url, token=args.token)
    except InvalidStatus as exc:
        body = exc.response.body.decode(errors="replace").strip()
        print(f"refused: HTTP {exc.response.status_code} {body}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "subscribe":
            for channel in args.channels:
                print(json.dumps(await client.subscribe(channel)), flush=True)
            async for msg in client.events():
                print(json.dumps(msg), flush=True)
            print(f"closed: {client.close_code}", file=sys.stderr)
        elif args.action == "publish":
            print(json.dumps(await client.publish(args.channel, _as_json(args.data))))
        else:
            print(json.dumps(await client.rpc(args.method, _as_json(args.data))))
    except SwitchboardError as exc:
        print(f"error {exc}", file=sys.stderr)
        return 1
    except Closed as exc:
        print(f"connection {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


def _channel(args: argparse.Namespace) -> int:
    from switchboard.contract.channel_config import load_manifests
    from switchboard.contract.errors import ManifestError

    manifests: list[tuple[str, ChannelSpec]] = []
    if args.action == "apply":
        try:
            text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
            manifests = list(load_manifests(text))
        except (ManifestError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return asyncio.run(_channel_store(args, manifests))


async def _channel_store(args: argparse.Namespace, manifests: list[tuple[str, ChannelSpec]]) -> int:
    from switchboard import jetstream
    from switchboard_operator import channelstore

    url = args.nats_url or jetstream.default_nats_url()
    try:
        if args.action == "apply":
            for name, spec in manifests:
                await channelstore.put_channel(url, name, spec)
                print(f"channel/{name} configured")
        elif args.action == "delete":
            await channelstore.delete_channel(url, args.name)
            print(f"channel/{args.name} deleted")
        else:
            for name, spec in sorted((await channelstore.list_channels(url)).items()):
                print(f"{name}\t{spec.to_json().decode()}")
    except OSError as exc:
        from switchboard.contract.natsauth import redact

        print(f"error: cannot reach NATS at {redact(url)}: {exc}", file=sys.stderr)
        return 1
    except jetstream.ReplicasRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _crds(out: Path | None) -> int:
    from switchboard_operator.crds import crd_files

    for name, text in crd_files().items():
        if out is None:
            print(f"---\n{text}", end="")
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
            print(f"wrote {out / name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "operator":
            from switchboard.contract import logs
            from switchboard_operator.main import run_operator
            from switchboard_operator.settings import load_operator_settings

            op_settings = load_operator_settings(
                nats_url=args.nats_url, namespace=args.namespace, standalone=args.standalone
            )
            logs.configure(op_settings.log_level)
            return run_operator(op_settings)
        if args.command == "cleanup":
            from switchboard import telemetry
            from switchboard.contract import logs
            from switchboard_operator.cleanup import cleanup

            logs.configure("INFO")
            with telemetry.command(
                "switchboard-cleanup",
                "switchboard cleanup",
                **{"k8s.namespace.name": args.namespace},
            ):
                return asyncio.run(cleanup(args.namespace, args.selector, args.timeout))
        if args.command == "drain":
            from switchboard.contract.localdrain import secret_path, start_local_drain

            return start_local_drain(args.port, secret_path(args.port, args.secret_file))
        if args.command == "probe":
            from switchboard import telemetry
            from switchboard.cli.probe import probe

            with telemetry.command("switchboard-cli", "switchboard probe"):
                return asyncio.run(
                    probe(args.url, args.token, args.secret, args.timeout, args.nats_url)
                )
        if args.command == "crds":
            return _crds(args.out)
        if args.command in ("chart-schema", "nats-authorization"):
            from switchboard.cli.chart_schema import render_nats_authorization, render_values_schema

            if args.command == "chart-schema":
                text = render_values_schema()
            else:
                text = render_nats_authorization()
            if args.out is None:
                print(text, end="")
            else:
                args.out.write_text(text)
                print(f"wrote {args.out}")
            return 0
        if args.command == "dev":
            from switchboard.cli.dev import run_dev

            return run_dev(args.ports, args.host, args.secret)
        if args.command == "edge":
            from edge.app import run
            from switchboard.contract import logs

            settings = load_edge_settings(
                port=args.port, host=args.host, nats_url=args.nats_url, pod_name=args.pod_name
            )
            logs.configure(settings.log_level)
            run(settings)
            return 0
        if args.command == "channel":
            from switchboard import telemetry

            with telemetry.command("switchboard-cli", f"switchboard channel {args.action}"):
                return _channel(args)
        if args.command == "settings":
            from switchboard.cli.settings_doc import markdown

            print(markdown())
            return 0
        if args.command == "token":
            from switchboard.contract.tokens import mint_token

            if not args.secret:
                print("a secret is required: --secret or $SB_EDGE_JWT_SECRET", file=sys.stderr)
                return 2
            print(
                mint_token(
                    args.secret,
                    args.sub,
                    ttl_s=args.ttl,
                    roles=args.roles,
                    channels=args.channels,
                    publish=args.publish,
                )
            )
            return 0
        return asyncio.run(_client(args))
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
