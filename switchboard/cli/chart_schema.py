"""The Helm chart's `values.schema.json`, generated so that no setting is described twice.

The parts of `values.yaml` that configure a process (`edge.config`,
`operator.config`, `edgePool`, `channels.extra`, `subjectPrefix`) come from the
same pydantic models that process validates its environment with; only the
chart's own structure (image, replicas, NATS, Secrets, Ingress, ...) is written
here. Helm refuses values that break the schema, naming the key, at install
time instead of the process refusing its environment at start-up.

`switchboard chart-schema --out charts/switchboard/values.schema.json` writes
it; a test fails when the committed file differs from `render_values_schema()`.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from edge.settings import EdgeSettings
from switchboard.cli.chart_hatches import (
    _INT_OR_PERCENT,
    _MIN_AVAILABLE,
    _deployment_strategy,
    _escape_hatches,
    _monitor,
    _probe,
    _strategy,
    _tristate,
)
from switchboard.cli.chart_parts import (
    JSON,
    _auth,
    _bool,
    _free,
    _image,
    _int,
    _list,
    _map,
    _network_policy,
    _obj,
    _otel,
    _pod_placement,
    _resources,
    _service,
    _service_account,
    _str,
)
from switchboard.contract.jsonschema import json_schema
from switchboard.contract.natsauth import NatsCredentials
from switchboard.contract.permissions import ROLES, Role, authorization_block
from switchboard_operator.models import ChannelSpec, EdgePoolSpec
from switchboard_operator.settings import OperatorSettings

# EdgeSettings the chart sets itself, from other values or the pod (so a user
# cannot contradict it): listen addresses and ports (`edge.port`, `edge.adminPort`:
# probes, monitors and Services name them), the server API's keys file
# (`edge.serverApi`, a mounted Secret), the pod name
# (downward API), NATS (`nats`), the NATS prefix (`subjectPrefix`, shared with
# the operator), key material (`auth`, from a Secret), the drain deadline
# (`edgePool.drain.timeoutSeconds`, which also sets the grace period), and the
# token-minting endpoint that only `switchboard dev` may open.
# How edges and the operator log in to NATS: the chart wires these from `nats.auth`
# (its generated Secret, or `nats.auth.existingSecret` for an external NATS).
NATS_CREDENTIAL_KEYS = tuple(NatsCredentials.model_fields)

EDGE_CHART_KEYS = (
    *NATS_CREDENTIAL_KEYS,
    "host",
    "port",
    "admin_host",
    "admin_port",
    "api_keys_file",
    "pod_name",
    "nats_url",
    "subject_prefix",
    "jwt_secret",
    "jwt_public_key_file",
    "resume_secret",
    "drain_timeout_s",
    "dev_tokens",
    "jetstream_replicas",
)

# OperatorSettings the chart sets itself: NATS, the prefix, the watched
# namespace (`operator.clusterWide`), the peering (the chart creates the
# KopfPeering object it names; the priority stays unset so that each replica draws
# its own) and the probe/metrics ports its manifests use.
OPERATOR_CHART_KEYS = (
    *NATS_CREDENTIAL_KEYS,
    "nats_url",
    "subject_prefix",
    "namespace",
    "peering",
    "standalone",
    "peering_priority",
    "health_port",
    "metrics_port",
    "jetstream_replicas",
)

# EdgePoolSpec.deployment is the chart's edge Deployment.
EDGEPOOL_CHART_KEYS = ("deployment",)

_NOISE = {"title", "doc_default"}
# A Gateway API duration (`1h`, `30s`, `0s`, `1m30s`), or empty for unset.
_DURATION = r"^(([0-9]{1,5}(h|m|s|ms)){1,4})?$"
# The Channel CRD's own rule on metadata.name.
_CHANNEL_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A key of a Secret's data (Kubernetes: alphanumerics, `-`, `_` and `.`).
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"


def model_schema(
    model: type[BaseModel],
    *,
    omit: tuple[str, ...] = (),
    by_alias: bool = False,
    nullable: bool = True,
    description: str | None = None,
) -> JSON:
    """A model's JSON schema for a values section: every key optional (the process
    default applies), unknown keys refused, the chart-set keys left out."""
    schema = json_schema(model, by_alias=by_alias, nullable=nullable, drop=_NOISE)
    for key in omit:
        del schema["properties"][key]  # KeyError: the model lost a key the chart sets
    schema.pop("required", None)
    schema["additionalProperties"] = False
    if description is not None:
        schema["description"] = description
    return schema


def _field(model: type[BaseModel], name: str) -> JSON:
    """One field's schema, e.g. the NATS prefix both processes share."""
    field: JSON = model_schema(model)["properties"][name]
    return field


def _secret_ref(description: str) -> JSON:
    return _obj(
        description,
        {
            "name": _str("Secret name (empty: not used)."),
            "key": _str("Key in the Secret.", minLength=1),
        },
    )


def values_schema() -> JSON:
    """The whole schema as a dict (see `render_values_schema`)."""
    edge_pool = model_schema(
        EdgePoolSpec,
        omit=EDGEPOOL_CHART_KEYS,
        by_alias=True,
        nullable=False,
        description="The EdgePool the operator scales and drains the edge Deployment by. "
        "`drain.timeoutSeconds` is also the edge's drain deadline and sets its grace period.",
    )
    edge_pool["properties"] = {
        "enabled": _bool("Create the EdgePool (the Deployment then has no fixed replicas)."),
        **edge_pool["properties"],
    }
    channel = model_schema(ChannelSpec, by_alias=True, nullable=False)
    return {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Values of the switchboard chart",
        "description": "Generated by `switchboard chart-schema` from the settings models; "
        "do not edit.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "global": _free("Helm globals (when used as a subchart)."),
            "nameOverride": _str("Replaces the chart name in resource names."),
            "fullnameOverride": _str("Replaces the release-chart prefix of resource names."),
            "commonLabels": _map("Labels added to every resource."),
            "image": _image("The Switchboard image (edge, operator, drain hook, test)."),
            "imagePullSecrets": _list("Pull secrets for every pod."),
            "subjectPrefix": _field(EdgeSettings, "subject_prefix"),
            "auth": _auth(),
            "otel": _otel(),
            "metrics": _obj(
                "Prometheus: scraping, alerts and the Grafana dashboard.",
                {
                    "podAnnotations": _bool("Annotate pods with prometheus.io/scrape, port, path."),
                    "serviceMonitor": _monitor("ServiceMonitor"),
                    "podMonitor": _monitor("PodMonitor"),
                    "prometheusRule": _obj(
                        "The chart's alerts (rules/switchboard.rules.yaml) as a PrometheusRule.",
                        {
                            "enabled": _tristate("Create the PrometheusRule."),
                            "labels": _map("Labels (what your Prometheus selects rules by)."),
                            "alertLabels": _map("Labels added to every alert."),
                            "disabled": {
                                "type": "array",
                                "description": "Alert names to leave out.",
                                "items": _str("An alert name.", pattern=r"^Switchboard\w+$"),
                            },
                            "slowConsumerEvictionsPerMinute": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "description": "SwitchboardSlowConsumerEvictions fires above "
                                "this many evictions per minute.",
                            },
                            "handshakeRefusalRatio": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": 1,
                                "description": "SwitchboardHandshakeRefusals fires when this "
                                "share of upgrades is refused with one status.",
                            },
                        },
                    ),
                    "dashboard": _obj(
                        "The Grafana dashboard (dashboards/switchboard.json) in a ConfigMap "
                        "for Grafana's dashboard sidecar.",
                        {
                            "enabled": _bool("Create the ConfigMap."),
                            "labels": _map("Labels the sidecar finds dashboards by."),
                            "annotations": _map("Annotations (e.g. the sidecar's folder)."),
                            "namespace": _str("Its namespace (empty: the release's)."),
                        },
                    ),
                },
            ),
            "edge": _obj(
                "The edge Deployment.",
                {
                    "replicas": _int("Fixed replicas, used only without the EdgePool.", 1),
                    "port": _int(
                        "Client port of the container: /v1/* (WebSockets, tickets).",
                        1,
                        maximum=65535,
                    ),
                    "adminPort": _int(
                        "Admin port: /healthz, /readyz, /metrics and the server API "
                        "(probes and Prometheus use it; never exposed to clients).",
                        1,
                        maximum=65535,
                    ),
                    "serverApi": _obj(
                        "Keys of the server API (docs/server-api.md), mounted from a Secret.",
                        {
                            "existingSecret": _str(
                                "A Secret with the keys, one per line (empty: the server "
                                "API answers 503 not_enabled)."
                            ),
                            "key": _str("Its key holding them.", pattern=_SECRET_KEY),
                        },
                    ),
                    "config": model_schema(
                        EdgeSettings,
                        omit=EDGE_CHART_KEYS,
                        description="Edge settings (the keys of docs/edge.md, snake_case), "
                        "passed as SB_EDGE_<KEY> variables.",
                    ),
                    "drainGraceMarginSeconds": _int(
                        "terminationGracePeriodSeconds = edgePool.drain.timeoutSeconds + this "
                        "(time to flush NATS and exit after the drain deadline).",
                        5,
                    ),
                    "podAntiAffinity": {
                        "enum": ["soft", "hard", "none"],
                        "description": "Spread edges over nodes: preferred, required, or not.",
                    },
                    "topologySpreadConstraints": _list(
                        "Topology spread constraints (the chart fills in the label selector)."
                    ),
                    "resources": _resources(
                        "Edge container resources. An edge is one process on one core: "
                        "give it requests.cpu 1 for real traffic and add pods for more "
                        "(docs/edge.md, Sizing)."
                    ),
                    "extraEnv": _list("Extra environment variables of the edge container."),
                    "strategy": _deployment_strategy(
                        "The Deployment's strategy (default: surge first, none unavailable)."
                    ),
                    "startupProbe": _probe("Startup probe (/healthz on the admin port)."),
                    "readinessProbe": _probe(
                        "Readiness probe (/readyz on the admin port: 503 while draining)."
                    ),
                    "livenessProbe": _probe("Liveness probe (/healthz on the admin port)."),
                    **_escape_hatches("edge"),
                    "pdb": _obj(
                        "The edges' PodDisruptionBudget.",
                        {"enabled": _bool("Create it."), "minAvailable": _MIN_AVAILABLE},
                    ),
                    "serviceAccount": _service_account("edge"),
                    **_pod_placement(),
                },
            ),
            "service": _service(),
            "ingress": _obj(
                "An Ingress for the WebSocket and tickets (/v1/ws, /v1/tickets).",
                {
                    "enabled": _bool("Create it."),
                    "className": _str("IngressClass."),
                    "annotations": _map("Annotations (merged over the timeout annotations)."),
                    "timeoutSeconds": _int(
                        "Idle timeout of proxied WebSockets (ingress-nginx read/send timeouts); "
                        "keep it well above edge.config.ping_interval_s.",
                        1,
                    ),
                    "paths": {
                        "type": "array",
                        "description": "Paths routed to the edges.",
                        "items": _str("A path prefix.", pattern="^/"),
                        "minItems": 1,
                    },
                    "hosts": {
                        "type": "array",
                        "description": "Host names.",
                        "items": _str("A host name.", minLength=1),
                    },
                    "tls": {
                        "type": "array",
                        "description": "TLS: [{secretName, hosts}].",
                        "items": _obj(
                            "One certificate.",
                            {
                                "secretName": _str("TLS Secret.", minLength=1),
                                "hosts": {"type": "array", "items": {"type": "string"}},
                            },
                        ),
                    },
                },
            ),
            "httpRoute": _obj(
                "A Gateway API HTTPRoute for the WebSocket and tickets (next to or instead "
                "of the Ingress).",
                {
                    "enabled": _bool("Create it."),
                    "annotations": _map("Annotations."),
                    "labels": _map("Labels."),
                    "parentRefs": {
                        "type": "array",
                        "description": "The Gateways (and listeners) it attaches to.",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": _str("The Gateway.", minLength=1)},
                        },
                    },
                    "hostnames": {
                        "type": "array",
                        "description": "Host names (empty: the listeners').",
                        "items": _str("A host name.", minLength=1),
                    },
                    "paths": {
                        "type": "array",
                        "description": "Path prefixes routed to the edges.",
                        "items": _str("A path prefix.", pattern="^/"),
                        "minItems": 1,
                    },
                    "timeouts": _obj(
                        "The route's timeouts (Gateway API durations; 0s: none).",
                        {
                            "request": {
                                "type": ["string", "null"],
                                "pattern": _DURATION,
                                "description": "Whole request; a WebSocket lasts as long as "
                                "its connection, so 0s (off) by default; null: unset.",
                            },
                            "backendRequest": {
                                "type": ["string", "null"],
                                "pattern": _DURATION,
                                "description": "Request to the edge (empty or null: unset).",
                            },
                        },
                    ),
                },
            ),
            "edgePool": edge_pool,
            "channels": _obj(
                "Channel resources created with the release.",
                {
                    "examples": _bool("Create the example Channels `chat` and `news`."),
                    "extra": {
                        "type": "object",
                        "description": "More Channels: name → spec (the Channel CRD's spec).",
                        "patternProperties": {_CHANNEL_NAME: channel},
                        "additionalProperties": False,
                    },
                },
            ),
            "operator": _obj(
                "The operator Deployment (kopf, peering between replicas).",
                {
                    "enabled": _bool("Run the operator."),
                    "replicas": _int("Replicas: one is active, the others stand by.", 1),
                    "clusterWide": _bool(
                        "Watch every namespace (ClusterRole) instead of the release's."
                    ),
                    "config": model_schema(
                        OperatorSettings,
                        omit=OPERATOR_CHART_KEYS,
                        description="Operator settings (snake_case), passed as "
                        "SB_OPERATOR_<KEY> variables.",
                    ),
                    "resources": _resources("Operator container resources."),
                    "extraEnv": _list("Extra environment variables of the operator container."),
                    "strategy": _deployment_strategy("The Deployment's strategy."),
                    "livenessProbe": _probe("Liveness probe (kopf's /healthz on 8081)."),
                    **_escape_hatches("operator"),
                    "pdb": _obj(
                        "The operator's PodDisruptionBudget.",
                        {"enabled": _bool("Create it."), "minAvailable": _MIN_AVAILABLE},
                    ),
                    "serviceAccount": _service_account("operator"),
                    "cleanupOnUninstall": _obj(
                        "A pre-delete hook Job that deletes the release's Channels and "
                        "EdgePool while the operator still runs, so none stays Terminating.",
                        {
                            "enabled": _bool("Run it on `helm uninstall`."),
                            "timeoutSeconds": _int("How long it waits for them to go.", 1),
                        },
                    ),
                    **_pod_placement(),
                },
            ),
            "networkPolicy": _network_policy(),
            "nats": _obj(
                "NATS: a bundled JetStream cluster, or an external one.",
                {
                    "enabled": _bool("Run the bundled NATS cluster (StatefulSet)."),
                    "url": _str("External NATS URL(s), comma-separated (nats.enabled: false)."),
                    "urlSecret": _secret_ref(
                        "Read the external URL (with credentials) from a Secret instead."
                    ),
                    "tls": _obj(
                        "TLS for NATS clients and routes (docs/security.md).",
                        {
                            "enabled": _bool("Turn TLS on."),
                            "secretName": _str(
                                "Secret with tls.crt, tls.key and ca.crt (unset: issued by "
                                "cert-manager)."
                            ),
                            "certManager": _obj(
                                "cert-manager Certificate (when secretName is unset).",
                                {
                                    "issuerRef": _obj(
                                        "The Issuer or ClusterIssuer.",
                                        {
                                            "name": _str("Its name."),
                                            "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                                            "group": _str("Its API group.", minLength=1),
                                        },
                                    )
                                },
                            ),
                        },
                    ),
                    "auth": _obj(
                        "Each client of NATS logs in as its role (edge, operator, backend) "
                        "with only that role's subjects (docs/security.md).",
                        {
                            "enabled": _bool("Users and permissions per role."),
                            "existingSecret": _str(
                                "Secret with keys edge-password, operator-password and "
                                "backend-password (unset: generated, kept across upgrades)."
                            ),
                            "users": _obj(
                                "NATS user name of each role.",
                                {role: _str(f"The {role}'s user.", minLength=1) for role in ROLES},
                            ),
                        },
                    ),
                    "image": _image("The NATS server image."),
                    "replicas": {
                        "enum": [1, 3, 5],
                        "description": "Servers; JetStream needs a majority, so 1, 3 or 5.",
                    },
                    "clusterDomain": _str("The cluster's DNS domain (routes).", minLength=1),
                    "jetstream": _obj(
                        "JetStream storage.",
                        {
                            "replicas": {
                                **_field(EdgeSettings, "jetstream_replicas"),
                                "description": "Copies of each history stream and of the "
                                "sb_* buckets: 1, 3, 5, or auto (bundled NATS: 3, or 1 with "
                                "one server; external: 3 if it is clustered, else 1).",
                            },
                            "memoryStore": _str(
                                "max_memory_store, e.g. 256Mi.", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$"
                            ),
                            "fileStore": _obj(
                                "File store on a PersistentVolumeClaim per server.",
                                {
                                    "size": _str(
                                        "PVC size, also max_file_store.",
                                        pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                                    ),
                                    "storageClassName": _str(
                                        "Storage class (empty: the cluster default)."
                                    ),
                                },
                            ),
                        },
                    ),
                    "lameDuck": _obj(
                        "Lame-duck mode on shutdown: clients move to the other servers.",
                        {
                            "durationSeconds": _int("lame_duck_duration.", 1),
                            "gracePeriodSeconds": _int("lame_duck_grace_period.", 0),
                        },
                    ),
                    "resources": _resources("NATS container resources."),
                    "pdb": _obj(
                        "NATS PodDisruptionBudget: one server down at a time (keeps quorum).",
                        {"enabled": _bool("Create it (with more than one replica).")},
                    ),
                    "updateStrategy": _strategy(
                        "The StatefulSet's update strategy.",
                        ("RollingUpdate", "OnDelete"),
                        {
                            "partition": _int("Only pods with this ordinal or higher.", 0),
                            "maxUnavailable": {
                                **_INT_OR_PERCENT,
                                "description": "maxUnavailable (needs the feature gate).",
                            },
                        },
                    ),
                    "startupProbe": _probe("Startup probe (/healthz?js-enabled-only=true)."),
                    "livenessProbe": _probe("Liveness probe (/healthz?js-enabled-only=true)."),
                    "readinessProbe": _probe("Readiness probe (/healthz?js-server-only=true)."),
                    **_escape_hatches("NATS", env_from=False),
                    **_pod_placement(),
                },
            ),
            "tests": _obj(
                "The `helm test` pod: a publish/subscribe round trip through the Service.",
                {
                    "enabled": _bool("Render the test pod."),
                    "timeoutSeconds": _int("How long the round trip may take.", 1),
                    "tokenSecret": _secret_ref(
                        "A JWT for the probe (needed with verification: publicKey)."
                    ),
                },
            ),
        },
    }


def render_values_schema() -> str:
    """`values.schema.json` as committed: stable JSON text with a trailing newline."""
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


# The chart renders NATS' `authorization` block from this file, replacing the prefix
# placeholder with `subjectPrefix`; the passwords are environment variables of the
# NATS container, read from the chart's Secret.
PREFIX_PLACEHOLDER = "@PREFIX@"
PASSWORD_VARIABLES: dict[Role, str] = {role: f"$SB_NATS_{role.upper()}_PASSWORD" for role in ROLES}


def render_nats_authorization() -> str:
    """`charts/switchboard/files/nats-authorization.conf` as committed."""
    header = (
        "# Generated by `switchboard nats-authorization` from "
        "switchboard/contract/permissions.py:\n"
        "# do not edit. One user per role, least privilege (docs/security.md).\n"
    )
    return header + authorization_block(PASSWORD_VARIABLES, PREFIX_PLACEHOLDER)


# The chart README's values table, generated from the schema (descriptions, types)
# and values.yaml (defaults) between these markers; a test fails when it is stale.
