"""Renders the chart with the real Helm engine (helm-python-sdk embeds Helm v4: the
same template functions, value coalescing and values.schema.json checks as
`helm install`), for the value sets the tests share."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "switchboard"
DEPLOY = ROOT / "deploy"
RELEASE = "sb"
NAMESPACE = "switchboard"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the one the
# control-plane tests run.
KUBE_VERSIONS = ("1.30", "1.36")

Values = dict[str, Any]
Doc = dict[str, Any]


def _public_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _deploy(name: str) -> Values:
    values: Values = yaml.safe_load((DEPLOY / name).read_text())
    return values


# What a platform team adds that the chart does not model, for each workload.
_ESCAPE_HATCHES: Values = {
    # OpenShift's restricted SCC picks the UID: the chart must not name one.
    "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
    "securityContext": {"runAsNonRoot": True},
    "extraVolumes": [{"name": "extra", "configMap": {"name": "extra"}}],
    "extraVolumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}],
    "extraContainers": [
        {
            "name": "sidecar",
            "image": "busybox:1.37",
            "args": ["sleep", "infinity"],
            "volumeMounts": [{"name": "extra", "mountPath": "/etc/extra"}],
        }
    ],
    "initContainers": [{"name": "init", "image": "busybox:1.37", "args": ["true"]}],
    "livenessProbe": {"periodSeconds": 15, "failureThreshold": 4},
}

VALUE_SETS: dict[str, Values] = {
    "default": {},
    "external-nats": {"nats": {"enabled": False, "url": "nats://nats.messaging.svc:4222"}},
    "external-nats-secret": {
        "nats": {"enabled": False, "urlSecret": {"name": "nats-url", "key": "url"}}
    },
    "no-examples": {"channels": {"examples": False}},
    "existing-secret": {
        "auth": {"existingSecret": "switchboard-keys"},
        "nats": {"auth": {"existingSecret": "nats-passwords"}},
    },
    "nats-auth-off": {"nats": {"auth": {"enabled": False}}, "networkPolicy": {"enabled": False}},
    "nats-tls": {
        "nats": {"tls": {"enabled": True, "secretName": "nats-tls"}},
        "networkPolicy": {"monitoringNamespaces": ["monitoring"]},
    },
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"},
            "hosts": ["ws.example.com", "ws2.example.com"],
            "tls": [{"secretName": "ws-tls", "hosts": ["ws.example.com", "ws2.example.com"]}],
        }
    },
    "public-key": {
        "auth": {"verification": "publicKey", "jwtPublicKey": _public_key_pem()},
        "tests": {"tokenSecret": {"name": "probe-token", "key": "token"}},
    },
    "cluster-wide": {"operator": {"clusterWide": True}},
    "fixed-replicas": {
        "edgePool": {"enabled": False},
        "edge": {"replicas": 1},
        "operator": {"enabled": False},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
    },
    "otel": {
        "otel": {
            "enabled": True,
            "endpoint": "http://otel-collector.observability.svc:4318",
            "sampler": "parentbased_traceidratio",
            "samplerArg": 0.25,
            "resourceAttributes": {"deployment.environment": "test"},
        },
        "edge": {
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                }
            ]
        },
    },
    "monitoring": {
        "metrics": {
            "podAnnotations": False,
            "serviceMonitor": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "scrapeTimeout": "10s",
                "metricRelabelings": [
                    {"action": "drop", "sourceLabels": ["__name__"], "regex": "sb_edge_x"}
                ],
            },
            "podMonitor": {
                "enabled": True,
                "interval": "15s",
                "relabelings": [
                    {"action": "replace", "targetLabel": "cluster", "replacement": "a"}
                ],
            },
            "prometheusRule": {"enabled": True, "alertLabels": {"team": "realtime"}},
            "dashboard": {
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "Switchboard"},
            },
        },
        # Another admin port than the default: every monitor and Service follows it.
        "edge": {"adminPort": 9100},
    },
    "server-api": {
        "edge": {"serverApi": {"existingSecret": "switchboard-api-keys", "key": "keys.txt"}},
        "networkPolicy": {
            "monitoringNamespaces": ["monitoring"],
            "admin": {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "orders"}
                        },
                        "podSelector": {"matchLabels": {"app": "orders"}},
                    },
                    {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}},
                ]
            },
        },
    },
    "gateway": {
        "httpRoute": {
            "enabled": True,
            "parentRefs": [
                {"name": "public", "namespace": "gateway-system", "sectionName": "https"}
            ],
            "hostnames": ["ws.example.com"],
            "timeouts": {"backendRequest": "0s"},
        },
    },
    "escape-hatches": {
        "edge": {
            **_ESCAPE_HATCHES,
            "envFrom": [{"secretRef": {"name": "edge-extra-env"}}],
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "10%"}},
            "readinessProbe": {"periodSeconds": 3, "timeoutSeconds": 1},
            "startupProbe": None,
        },
        "operator": {
            **_ESCAPE_HATCHES,
            "envFrom": [{"configMapRef": {"name": "operator-extra-env"}}],
            "strategy": {"type": "Recreate"},
        },
        "nats": {
            **_ESCAPE_HATCHES,
            "updateStrategy": {"type": "OnDelete"},
            "readinessProbe": {"tcpSocket": {"port": "nats"}, "periodSeconds": 5},
        },
    },
    "deploy-dev": _deploy("values-dev.yaml"),
    "deploy-production": _deploy("values-production.yaml"),
}


def render(values: Values, release: str = RELEASE) -> dict[str, str]:
    """Template path → rendered text, as `helm install` would produce (offline)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=release, namespace=NAMESPACE, is_install=True)


def parse(rendered: dict[str, str]) -> list[Doc]:
    """Every Kubernetes object in the rendered templates (NOTES.txt is not one)."""
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def rendered_set(name: str) -> dict[str, str]:
    return render(VALUE_SETS[name])


def docs_of(name: str) -> list[Doc]:
    return parse(rendered_set(name))


def find(docs: list[Doc], kind: str, suffix: str = "") -> Doc:
    """The one object of this kind whose name ends with `suffix`."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{suffix}"
    return found[0]


def find_all(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[Doc]) -> list[tuple[str, Doc]]:
    """(name, pod spec) of every workload and bare pod."""
    specs = [(d["metadata"]["name"], d["spec"]) for d in docs if d["kind"] == "Pod"]
    specs += [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]
    return specs


def container_env(
    docs: list[Doc], container: Doc, secrets: dict[tuple[str, str], str] | None = None
) -> dict[str, str]:
    """The environment a container would see: its ConfigMaps (envFrom), then env;
    Secret references resolved from `secrets`, the pod name as `pod-0`, its node `node-0`."""
    env: dict[str, str] = {}
    rendered = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name in rendered:  # the user's own sources (envFrom values) are not rendered
            env.update(rendered[name]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            field = ref["fieldRef"]["fieldPath"]
            assert field in ("metadata.name", "spec.nodeName"), field
            env[item["name"]] = "pod-0" if field == "metadata.name" else "node-0"
        elif "secretKeyRef" in ref:
            key = (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
            env[item["name"]] = (secrets or {}).get(key, "s" * 40)
    return env


def mount_files(
    spec: Doc,
    container: Doc,
    env: dict[str, str],
    root: Path,
    files: dict[tuple[str, str], str] | None = None,
) -> dict[str, str]:
    """What a kubelet does with the container's Secret volumes: each item written
    under `root` at its mount path (contents from `files` by (Secret, key), else a
    40-character line), and the environment's paths into those mounts moved along."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    moved = dict(env)
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        target = root / mount["mountPath"].lstrip("/")
        for item in secret.get("items", []):
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text((files or {}).get((secret["secretName"], item["key"]), "s" * 40 + "\n"))
        for key, value in env.items():
            if value.startswith(mount["mountPath"] + "/"):
                moved[key] = str(root / value.lstrip("/"))
    return moved


def container(spec: Doc, name: str) -> Doc:
    found: Doc = next(c for c in spec["containers"] if c["name"] == name)
    return found
