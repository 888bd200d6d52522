{{/* Names and labels. */}}
{{- define "sagapipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sagapipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sagapipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sagapipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sagapipe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sagapipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sagapipe
{{- end }}

{{- define "sagapipe.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Where the configuration file is mounted; SAGAPIPE_CONFIG names it. */}}
{{- define "sagapipe.configDir" -}}/etc/sagapipe/config{{- end }}

{{/*
sagapipe.shutdownGraceSeconds: config.shutdown_grace in seconds, rounded up,
parsed as Go's time.ParseDuration does (units h, m, s, ms, us, µs, ns; "0" and
unset mean the service's default, 30s). A number without a unit is refused:
the service would read it as nanoseconds.
*/}}
{{- define "sagapipe.shutdownGraceSeconds" -}}
{{- $raw := .Values.config.shutdown_grace }}
{{- if or (eq (toString $raw) "<nil>") (eq (toString $raw) "") (eq (toString $raw) "0") }}
{{- $raw = "30s" }}
{{- end }}
{{- if not (kindIs "string" $raw) }}
{{- fail (printf "config.shutdown_grace: %v has no unit; write a Go duration such as 30s or 1m30s (a bare number is nanoseconds to the service)" $raw) }}
{{- end }}
{{- if not (regexMatch "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h)(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h))*$" $raw) }}
{{- fail (printf "config.shutdown_grace: %q is not a Go duration such as 30s or 1m30s" $raw) }}
{{- end }}
{{- $unitSeconds := dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "µs" 0.000001 "ns" 0.000000001 }}
{{- $total := 0.0 }}
{{- range regexFindAll "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h)" $raw -1 }}
{{- $unit := regexFind "(ns|us|µs|ms|s|m|h)$" . }}
{{- $total = addf $total (mulf (float64 (trimSuffix $unit .)) (get $unitSeconds $unit)) }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/* terminationGracePeriodSeconds: shutdown_grace plus the margin. */}}
{{- define "sagapipe.terminationGracePeriodSeconds" -}}
{{- $margin := int .Values.terminationGracePeriodMargin }}
{{- if lt $margin 1 }}
{{- fail (printf "terminationGracePeriodMargin: %v must be at least 1 second, or the kubelet may kill a shutdown the service would finish within config.shutdown_grace" .Values.terminationGracePeriodMargin) }}
{{- end }}
{{- add (include "sagapipe.shutdownGraceSeconds" . | int) $margin }}
{{- end }}

{{/* sagapipe.httpPort: the port of config.http_addr ([host]:port). */}}
{{- define "sagapipe.httpPort" -}}
{{- $addr := toString (.Values.config.http_addr | default ":8080") }}
{{- $parts := regexFindAll "^(.*):([0-9]+)$" $addr -1 }}
{{- if not $parts }}
{{- fail (printf "config.http_addr: %q is not [host]:port" $addr) }}
{{- end }}
{{- $host := regexReplaceAll "^(.*):([0-9]+)$" $addr "${1}" }}
{{- if has (trimAll "[]" $host) (list "localhost" "127.0.0.1" "::1") }}
{{- fail (printf "config.http_addr: %q listens on a loopback address, out of the kubelet's probes and the Service's reach; use :PORT" $addr) }}
{{- end }}
{{- regexReplaceAll "^(.*):([0-9]+)$" $addr "${2}" }}
{{- end }}

{{/*
sagapipe.validate fails on values that would give a broken or unsafe
deployment, naming the value and the fix. Included by every template that
depends on the configuration.
*/}}
{{- define "sagapipe.validate" -}}
{{- $c := .Values.config }}
{{- if not $c.brokers }}
{{- fail "config.brokers: required, the Kafka bootstrap brokers (host:port list)" }}
{{- end }}
{{- if not (kindIs "slice" $c.brokers) }}
{{- fail "config.brokers: want a list of host:port" }}
{{- end }}
{{- if not (dig "registry" "url" "" $c) }}
{{- fail "config.registry.url: required, the Schema Registry URL (http:// or https://)" }}
{{- end }}
{{- if lt (int .Values.inboxPartitions) 1 }}
{{- fail (printf "inboxPartitions: %v must be at least 1" .Values.inboxPartitions) }}
{{- end }}
{{- if gt (int .Values.replicaCount) (int .Values.inboxPartitions) }}
{{- fail (printf "replicaCount %v > inboxPartitions %v: an instance beyond the inbox's partition count owns no partition, stays unready and does nothing useful; lower replicaCount or create the topics with more partitions and raise inboxPartitions" .Values.replicaCount .Values.inboxPartitions) }}
{{- end }}
{{- if dig "registry" "password" "" $c }}
{{- fail "config.registry.password: secret values never go in values; put it in a Secret and name it in secrets.registryPassword.existingSecret" }}
{{- end }}
{{- if dig "sasl" "password" "" $c }}
{{- fail "config.sasl.password: secret values never go in values; put it in a Secret and name it in secrets.saslPassword.existingSecret" }}
{{- end }}
{{- if $c.api_token }}
{{- fail "config.api_token: secret values never go in values; put it in a Secret and name it in secrets.apiToken.existingSecret" }}
{{- end }}
{{- if hasKey $c "state_dir" }}
{{- fail "config.state_dir: set by the chart to persistence.mountPath (the state volume); set that instead" }}
{{- end }}
{{- if and (dig "sasl" "mechanism" "" $c) (not .Values.secrets.saslPassword.existingSecret) }}
{{- fail (printf "config.sasl.mechanism %s needs a password: name its Secret in secrets.saslPassword.existingSecret" (dig "sasl" "mechanism" "" $c)) }}
{{- end }}
{{- if and (dig "registry" "username" "" $c) (not .Values.secrets.registryPassword.existingSecret) }}
{{- fail "config.registry.username needs a password: name its Secret in secrets.registryPassword.existingSecret" }}
{{- end }}
{{- range $file := list "ca_file" "cert_file" "key_file" }}
{{- $path := dig "tls" $file "" $c }}
{{- if and $path (not $.Values.tls.existingSecret) }}
{{- fail (printf "config.tls.%s is set but tls.existingSecret is not: put the file in a Secret, name it in tls.existingSecret and point config.tls.%s under tls.mountPath (%s)" $file $file $.Values.tls.mountPath) }}
{{- end }}
{{- end }}
{{- $managed := list "SAGAPIPE_CONFIG" "SAGAPIPE_STATE_DIR" "SAGAPIPE_SHUTDOWN_GRACE" "SAGAPIPE_HTTP_ADDR" "SAGAPIPE_SASL_PASSWORD" "SAGAPIPE_REGISTRY_PASSWORD" "SAGAPIPE_API_TOKEN" "SAGAPIPE_INSTANCE_ID" }}
{{- range .Values.extraEnv }}
{{- if has .name $managed }}
{{- fail (printf "extraEnv: %s is set by the chart; use config (shutdown_grace, http_addr), persistence.mountPath or secrets.* instead" .name) }}
{{- end }}
{{- end }}
{{- $_ := include "sagapipe.httpPort" . }}
{{- $_ = include "sagapipe.terminationGracePeriodSeconds" . }}
{{- end }}

{{/* The configuration file: config plus state_dir on the state volume. */}}
{{- define "sagapipe.configYAML" -}}
{{- $c := deepCopy .Values.config }}
{{- $_ := set $c "state_dir" .Values.persistence.mountPath }}
{{- toYaml $c }}
{{- end }}

{{/*
sagapipe.connectionEnv: the environment both the service and the topics Job
need: the configuration file and the secrets that reach the cluster.
*/}}
{{- define "sagapipe.connectionEnv" -}}
- name: SAGAPIPE_CONFIG
  value: {{ include "sagapipe.configDir" . }}/config.yaml
{{- with .Values.secrets.saslPassword.existingSecret }}
- name: SAGAPIPE_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.saslPassword.key }}
{{- end }}
{{- with .Values.secrets.registryPassword.existingSecret }}
- name: SAGAPIPE_REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secrets.registryPassword.key }}
{{- end }}
{{- end }}

{{/* The pod-level settings shared by the service and the topics Job. */}}
{{- define "sagapipe.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
