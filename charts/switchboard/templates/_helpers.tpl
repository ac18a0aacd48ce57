{{/* Names: <release>-switchboard, shortened to the release name when it already says so,
and to 40 characters so that "<fullname>-nats-headless" and the StatefulSet's
controller-revision-hash label stay within 63. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "switchboard.edgeName" -}}{{ include "switchboard.fullname" . }}-edge{{- end }}
{{- define "switchboard.operatorName" -}}{{ include "switchboard.fullname" . }}-operator{{- end }}
{{- define "switchboard.natsName" -}}{{ include "switchboard.fullname" . }}-nats{{- end }}
{{- define "switchboard.natsHeadlessName" -}}{{ include "switchboard.fullname" . }}-nats-headless{{- end }}

{{/* The kopf peering name: the operator's settings allow no dots. */}}
{{- define "switchboard.peeringName" -}}{{ include "switchboard.fullname" . | replace "." "-" }}{{- end }}

{{- define "switchboard.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "switchboard.fullname" .)) }}
{{- end }}

{{- define "switchboard.edgeServiceAccountName" -}}
{{- if .Values.edge.serviceAccount.create }}
{{- .Values.edge.serviceAccount.name | default (include "switchboard.edgeName" .) }}
{{- else }}
{{- .Values.edge.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "switchboard.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- .Values.operator.serviceAccount.name | default (include "switchboard.operatorName" .) }}
{{- else }}
{{- .Values.operator.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* Labels. Call with (dict "ctx" $ "component" "edge"). */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}. Call with (dict "image" ... "ctx" $). */}}
{{- define "switchboard.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "switchboard.image" -}}
{{ include "switchboard.imageRef" (dict "image" .Values.image "ctx" .) }}
{{- end }}

{{/* The URL edges and operator reach NATS at (when not read from nats.urlSecret). */}}
{{- define "switchboard.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "switchboard.natsName" .) .Release.Namespace }}
{{- else }}
{{- .Values.nats.url }}
{{- end }}
{{- end }}

{{/* A value as an environment variable: strings as they are, everything else as JSON
(numbers never in exponent form, lists and objects as pydantic-settings reads them). */}}
{{- define "switchboard.envValue" -}}
{{- if kindIs "string" . }}{{ quote . }}{{ else }}{{ toJson . | quote }}{{ end }}
{{- end }}

{{/* An int-or-string field: 1 stays 1, "50%" stays "50%". */}}
{{- define "switchboard.intOrPercent" -}}
{{- if kindIs "string" . }}{{ quote . }}{{ else }}{{ int . }}{{ end }}
{{- end }}

{{/* A securityContext from values (non-root, read-only root filesystem, no privileges,
no capabilities by default); keys set to null are gone, as OpenShift's random UIDs need. */}}
{{- define "switchboard.securityContext" -}}
{{- with . -}}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A probe from values: its timings, and the chart's handler unless it names one.
(dict "name" "readinessProbe" "probe" $values "handler" (dict "httpGet" ...)). A probe set
to null renders nothing. */}}
{{- define "switchboard.probe" -}}
{{- if .probe }}
{{- $probe := deepCopy .probe }}
{{- if not (or $probe.httpGet $probe.tcpSocket $probe.exec $probe.grpc) }}
{{- $probe = merge $probe .handler }}
{{- end -}}
{{ .name }}:
  {{- toYaml $probe | nindent 2 }}
{{- end }}
{{- end }}

{{/* A Deployment or StatefulSet strategy from values: rollingUpdate only with RollingUpdate. */}}
{{- define "switchboard.strategy" -}}
{{- $strategy := deepCopy .strategy }}
{{- if ne (toString $strategy.type) "RollingUpdate" }}
{{- $strategy = omit $strategy "rollingUpdate" }}
{{- end }}
{{- if $strategy -}}
{{ .field }}:
  {{- toYaml $strategy | nindent 2 }}
{{- end }}
{{- end }}

{{/* Anti-affinity of a component over nodes: (dict "ctx" $ "component" "edge" "mode" "soft"). */}}
{{- define "switchboard.antiAffinity" -}}
{{- if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "switchboard.selectorLabels" . | nindent 10 }}
{{- else if eq .mode "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "switchboard.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}

{{/* The standard OpenTelemetry variables (ConfigMap data) for one service. */}}
{{- define "switchboard.otelEnv" -}}
{{- with .ctx.Values.otel }}
{{- if .enabled }}
OTEL_SERVICE_NAME: {{ $.service | quote }}
OTEL_TRACES_EXPORTER: "otlp"
OTEL_METRICS_EXPORTER: "none"
OTEL_LOGS_EXPORTER: "none"
OTEL_EXPORTER_OTLP_PROTOCOL: {{ .protocol | default "http/protobuf" | quote }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .endpoint | quote }}
OTEL_TRACES_SAMPLER: {{ .sampler | quote }}
OTEL_TRACES_SAMPLER_ARG: {{ toJson .samplerArg | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* OTEL_RESOURCE_ATTRIBUTES (env list: it names the pod and its node, from the downward
API). (dict "ctx" $ "podVar" "SB_EDGE_POD_NAME") */}}
{{- define "switchboard.otelResourceEnv" -}}
{{- if .ctx.Values.otel.enabled }}
{{- $attrs := list (printf "k8s.namespace.name=%s" .ctx.Release.Namespace) (printf "k8s.pod.name=$(%s)" .podVar) "k8s.node.name=$(K8S_NODE_NAME)" (printf "service.instance.id=$(%s)" .podVar) }}
{{- range $k, $v := .ctx.Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
{{- end }}
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end }}
{{- end }}

{{/* The cleanup hook's OTEL_* (env list: the hook has no ConfigMap of its own). */}}
{{- define "switchboard.otelHookEnv" -}}
{{- if .ctx.Values.otel.enabled }}
{{- range $k, $v := (include "switchboard.otelEnv" (dict "ctx" .ctx "service" "switchboard-cleanup") | fromYaml) }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{ include "switchboard.otelResourceEnv" (dict "ctx" .ctx "podVar" "POD_NAME") }}
{{- end }}
{{- end }}

{{/* The edge's admin port (SB_EDGE_ADMIN_PORT): /healthz, /readyz, /metrics and the
server API. Its container port is named `admin`; only the admin and metrics Services
name it, never the client Service, Ingress or HTTPRoute. */}}
{{- define "switchboard.edgeAdminPort" -}}
{{- .Values.edge.adminPort | int }}
{{- end }}

{{/* Where the server API's keys file is mounted (edge.serverApi.existingSecret). */}}
{{- define "switchboard.apiKeysDir" -}}/etc/switchboard/api-keys{{- end }}

{{/* The operator's /metrics port (SB_OPERATOR_METRICS_PORT). */}}
{{- define "switchboard.operatorMetricsPort" -}}9090{{- end }}

{{/* Whether to render an object of a prometheus-operator (or other optional) API:
"true" or "". (dict "ctx" $ "enabled" <auto|true|false> "api" "monitoring.coreos.com/v1/ServiceMonitor") */}}
{{- define "switchboard.apiEnabled" -}}
{{- if eq (toString .enabled) "auto" }}
{{- if .ctx.Capabilities.APIVersions.Has .api }}true{{ end }}
{{- else if .enabled }}true
{{- end }}
{{- end }}

{{/* Labels of the Services ServiceMonitors select: (dict "ctx" $ "component" "edge") */}}
{{- define "switchboard.metricsServiceLabels" -}}
{{ include "switchboard.selectorLabels" . }}
switchboard.dev/metrics: "true"
{{- end }}

{{/* Prometheus annotations. (dict "ctx" $ "port" 8080) */}}
{{- define "switchboard.metricsAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* SB_*_JETSTREAM_REPLICAS: the copies of streams and buckets. "auto" with the
bundled NATS is decided here (3, or 1 for a single server); with an external NATS
the processes ask the server whether it is clustered. */}}
{{- define "switchboard.jetstreamReplicas" -}}
{{- $r := .Values.nats.jetstream.replicas }}
{{- if and (eq (toString $r) "auto") .Values.nats.enabled }}
{{- min 3 (int .Values.nats.replicas) }}
{{- else }}
{{- toString $r }}
{{- end }}
{{- end }}

{{/* Values the schema cannot judge alone (they span keys): refused with the key's name. */}}
{{- define "switchboard.validate" -}}
{{- $v := .Values }}
{{- if and $v.nats.tls.enabled (not $v.nats.tls.secretName) (or (not $v.nats.enabled) (not $v.nats.tls.certManager.issuerRef.name)) }}
{{- fail "nats.tls.secretName: name the Secret with tls.crt, tls.key and ca.crt (or, with the bundled NATS, nats.tls.certManager.issuerRef.name to have cert-manager issue it)" }}
{{- end }}
{{- if and (not $v.nats.enabled) (not $v.nats.url) (not $v.nats.urlSecret.name) }}
{{- fail "nats.url: set the external NATS URL (or nats.urlSecret.name), or nats.enabled: true for the bundled cluster" }}
{{- end }}
{{- if and $v.nats.enabled (or $v.nats.url $v.nats.urlSecret.name) }}
{{- fail "nats.url / nats.urlSecret: an external NATS needs nats.enabled: false (the bundled cluster is enabled)" }}
{{- end }}
{{- if and $v.nats.enabled (ne (toString $v.nats.jetstream.replicas) "auto") }}
{{- if gt (int $v.nats.jetstream.replicas) (int $v.nats.replicas) }}
{{- fail (printf "nats.jetstream.replicas (%d) exceeds nats.replicas (%d): JetStream keeps each copy on its own server" (int $v.nats.jetstream.replicas) (int $v.nats.replicas)) }}
{{- end }}
{{- end }}
{{- if gt (int $v.edgePool.minReplicas) (int $v.edgePool.maxReplicas) }}
{{- fail (printf "edgePool.minReplicas (%d) exceeds edgePool.maxReplicas (%d)" (int $v.edgePool.minReplicas) (int $v.edgePool.maxReplicas)) }}
{{- end }}
{{- if and (eq $v.auth.verification "publicKey") (not $v.auth.existingSecret) (not $v.auth.jwtPublicKey) }}
{{- fail "auth.jwtPublicKey: required with auth.verification: publicKey (or name a Secret in auth.existingSecret)" }}
{{- end }}
{{- if and (eq $v.auth.verification "publicKey") $v.auth.jwtSecret }}
{{- fail "auth.jwtSecret: not used with auth.verification: publicKey; remove it or set verification: secret" }}
{{- end }}
{{- if and $v.auth.existingSecret (or $v.auth.jwtSecret $v.auth.jwtPublicKey $v.auth.resumeSecret) }}
{{- fail "auth.existingSecret: the keys come from that Secret; leave auth.jwtSecret, auth.jwtPublicKey and auth.resumeSecret empty" }}
{{- end }}
{{- if eq (int $v.edge.adminPort) (int $v.edge.port) }}
{{- fail (printf "edge.adminPort (%d) equals edge.port: the admin port (health, metrics, server API) needs a port of its own, never exposed to clients" (int $v.edge.adminPort)) }}
{{- end }}
{{- if and $v.httpRoute.enabled (not $v.httpRoute.parentRefs) }}
{{- fail "httpRoute.parentRefs: name the Gateway the HTTPRoute attaches to (e.g. [{name: public, namespace: gateway-system}])" }}
{{- end }}
{{- if and $v.otel.enabled (not $v.otel.endpoint) }}
{{- fail "otel.endpoint: required with otel.enabled (e.g. http://otel-collector:4318)" }}
{{- end }}
{{- end }}

{{/* The Secret holding each NATS role's password. */}}
{{- define "switchboard.natsAuthSecretName" -}}
{{- .Values.nats.auth.existingSecret | default (printf "%s-nats-credentials" (include "switchboard.fullname" .)) }}
{{- end }}

{{/* Environment of a process that logs in to NATS as `role` (prefix SB_EDGE_ / SB_OPERATOR_). */}}
{{- define "switchboard.natsAuthEnv" -}}
{{- $v := .ctx.Values }}
{{- if $v.nats.auth.enabled }}
- name: {{ .prefix }}NATS_USER
  value: {{ index $v.nats.auth.users .role | quote }}
- name: {{ .prefix }}NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "switchboard.natsAuthSecretName" .ctx }}
      key: {{ .role }}-password
{{- end }}
{{- end }}

{{/* The Secret with the NATS TLS certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "switchboard.natsTlsSecretName" -}}
{{- .Values.nats.tls.secretName | default (printf "%s-tls" (include "switchboard.natsName" .)) }}
{{- end }}

{{/* TLS toward NATS for a client process: trust the CA of the NATS certificate. */}}
{{- define "switchboard.natsTlsEnv" -}}
{{- if .ctx.Values.nats.tls.enabled }}
- name: {{ .prefix }}NATS_TLS_CA_FILE
  value: /etc/switchboard/nats-ca/ca.crt
{{- end }}
{{- end }}
{{- define "switchboard.natsTlsMount" -}}
{{- if .Values.nats.tls.enabled }}
- name: nats-ca
  mountPath: /etc/switchboard/nats-ca
  readOnly: true
{{- end }}
{{- end }}
{{- define "switchboard.natsTlsVolume" -}}
{{- if .Values.nats.tls.enabled }}
- name: nats-ca
  secret:
    secretName: {{ include "switchboard.natsTlsSecretName" . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{/* interval, scrapeTimeout and relabelings of a monitor endpoint, from metrics.serviceMonitor / podMonitor. */}}
{{- define "switchboard.scrapeSettings" -}}
{{- with .interval }}
interval: {{ . }}
{{- end }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
