{{/* Names are cut to 63 characters: Kubernetes label values and DNS names allow no more. */}}
{{- define "dcr-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dcr-stream.fullname" -}}
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

{{- define "dcr-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dcr-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dcr-stream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dcr-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dcr-stream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dcr-stream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dcr-stream.secretName" -}}
{{- default (include "dcr-stream.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/*
The credentials the service reads from a file mounted from the Secret, as YAML: the variable that
names the file, the file's name, and its key in the Secret. Empty when the credentials are
variables (DCR_API_TOKEN, DCR_API_KEY_ID + DCR_API_KEY).
*/}}
{{- define "dcr-stream.authFile" -}}
{{- if eq .Values.auth.mode "credentialsFile" }}
env: DCR_API_CREDENTIALS_FILE
file: credentials
key: {{ .Values.auth.secretKeys.credentialsFile | quote }}
{{- else if .Values.auth.mountTokenAsFile }}
env: DCR_API_TOKEN_FILE
file: token
key: {{ .Values.auth.secretKeys.token | quote }}
{{- end }}
{{- end }}

{{- define "dcr-stream.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when an HPA or a KEDA ScaledObject owns the replica count, else "". */}}
{{- define "dcr-stream.autoscaled" -}}
{{- if or .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled }}true{{ end }}
{{- end }}

{{- define "dcr-stream.dlqTopic" -}}
{{- default (printf "%s.dlq" (first .Values.kafka.topics)) .Values.kafka.dlqTopic }}
{{- end }}

{{/*
The service's DCR_* settings (stream/config.py), as YAML. Optional settings left empty are not
set at all, so the service applies its own default. extraConfig may add settings the chart has no
value for, but never replace one it has.
*/}}
{{- define "dcr-stream.settings" -}}
{{- $kafka := .Values.kafka }}
{{- $settings := dict
  "DCR_KAFKA_BOOTSTRAP_SERVERS" $kafka.bootstrapServers
  "DCR_KAFKA_TOPICS" (join "," $kafka.topics)
  "DCR_KAFKA_GROUP_ID" $kafka.groupId
  "DCR_DLQ_TOPIC" (include "dcr-stream.dlqTopic" .)
  "DCR_API_BASE_URL" .Values.api.baseUrl
  "DCR_API_VERSION" .Values.api.version
  "DCR_TOKEN_POOL_SIZE" (toString (int64 .Values.quota.tokenPoolSize))
  "DCR_TOKEN_REQUESTS_PER_MINUTE" (printf "%g" (float64 .Values.quota.tokenRequestsPerMinute))
  "DCR_TOKEN_SHARING" (ternary "on" "off" (ne .Values.quota.tokenSharing false))
  "DCR_REALTIME" (ternary "on" "off" .Values.realtime.enabled)
  "DCR_URGENT_WITHIN_S" (printf "%g" (float64 .Values.realtime.urgentWithinSeconds))
  "DCR_REALTIME_REQUESTS_PER_SECOND" (printf "%g" (float64 .Values.realtime.requestsPerSecond))
  "DCR_BATCH_MAX_RECORDS" (toString (int64 .Values.batch.maxRecords))
  "DCR_BATCH_LINGER_MS" (toString (int64 .Values.batch.lingerMs))
  "DCR_MAX_BUFFERED_RECORDS" (toString (int64 .Values.maxBufferedRecords))
  "DCR_HTTP_PORT" (toString (int64 .Values.httpPort))
  "DCR_SHUTDOWN_TIMEOUT_S" (toString (int64 .Values.shutdownTimeoutSeconds))
  "DCR_LOG_LEVEL" .Values.logLevel
  "DCR_RECONCILE" .Values.reconcile.mode
  "DCR_STATUS_DELAY_S" (printf "%g" (float64 .Values.reconcile.statusDelaySeconds))
  "DCR_STATUS_REQUESTS_PER_MINUTE" (printf "%g" (float64 .Values.reconcile.statusRequestsPerMinute))
  "DCR_STATUS_GIVE_UP_S" (printf "%g" (float64 .Values.reconcile.statusGiveUpSeconds))
}}
{{- with $kafka.highPriorityTopics }}
{{- $_ := set $settings "DCR_KAFKA_HIGH_PRIORITY_TOPICS" (join "," .) }}
{{- end }}
{{- if not (kindIs "invalid" .Values.quota.accountRequestsPerSecond) }}
{{- $_ := set $settings "DCR_RATE_LIMIT_RPS" (printf "%g" (float64 .Values.quota.accountRequestsPerSecond)) }}
{{- end }}
{{- with .Values.quota.tokenTopic }}
{{- $_ := set $settings "DCR_TOKEN_TOPIC" . }}
{{- end }}
{{- with $kafka.receiptsTopic }}
{{- $_ := set $settings "DCR_RECEIPTS_TOPIC" . }}
{{- end }}
{{- with $kafka.config }}
{{- $_ := set $settings "DCR_KAFKA_CONFIG" (include "dcr-stream.kafkaConfigJson" .) }}
{{- end }}
{{- with .Values.api.clientAccountId }}
{{- $_ := set $settings "DCR_CLIENT_ACCOUNT_ID" . }}
{{- end }}
{{- with .Values.api.allowedLabelIds }}
{{- $pairs := list }}
{{- range $account, $labels := . }}
{{- range $labels }}
{{- $pairs = append $pairs (printf "%s:%s" $account .) }}
{{- end }}
{{- end }}
{{- $_ := set $settings "DCR_ALLOWED_LABEL_IDS" (join "," $pairs) }}
{{- end }}
{{- /* Set in the container's environment, each from the value named. */}}
{{- $environment := dict
  "DCR_API_TOKEN" "auth.mode"
  "DCR_API_TOKEN_FILE" "auth.mode"
  "DCR_API_KEY_ID" "auth.mode"
  "DCR_API_KEY" "auth.mode"
  "DCR_API_CREDENTIALS_FILE" "auth.mode"
  "DCR_API_CA_BUNDLE" "api.caBundle"
  "DCR_KAFKA_SECRET_CONFIG" "kafka.secretConfig"
  "DCR_KAFKA_INSTANCE_ID" "kafka.staticMembership"
}}
{{- range $name, $value := .Values.extraConfig }}
{{- if hasKey $settings $name }}
{{- fail (printf "extraConfig.%s is set by the chart: use its value instead (see the chart's README)" $name) }}
{{- end }}
{{- with get $environment $name }}
{{- fail (printf "extraConfig.%s is set by the chart: use %s instead (see the chart's README)" $name .) }}
{{- end }}
{{- $_ := set $settings $name $value }}
{{- end }}
{{- toYaml $settings }}
{{- end }}

{{/* librdkafka properties as a JSON object of strings: 45000 and true become "45000" and "true". */}}
{{- define "dcr-stream.kafkaConfigJson" -}}
{{- $out := dict }}
{{- range $key, $value := . }}
{{- $_ := set $out $key (ternary $value (toJson $value) (kindIs "string" $value)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Checks the schema cannot express; each failure names the value to change. Rendered once, from the
Deployment, which every release has.
*/}}
{{- define "dcr-stream.validate" -}}
{{- if not .Values.api.baseUrl }}
{{- fail "api.baseUrl is required: set it to the base URL of the Dynamic Call Records API (it becomes DCR_API_BASE_URL)" }}
{{- end }}
{{- if and .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled }}
{{- fail "autoscaling.hpa.enabled and autoscaling.keda.enabled are both true: enable one of them (a KEDA ScaledObject creates its own HPA, and two HPAs on one Deployment fight)" }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) is greater than autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- $replicas := ternary .Values.autoscaling.maxReplicas .Values.replicaCount (eq (include "dcr-stream.autoscaled" .) "true") }}
{{- if and (eq .Values.quota.tokenSharing false) (gt (int $replicas) (int .Values.quota.tokenPoolSize)) }}
{{- fail (printf "%v replicas but quota.tokenPoolSize=%v token slots and quota.tokenSharing=false: a replica beyond the slots holds no token and cannot send (turn tokenSharing on, or lower the replicas, or raise the pool, at most 10)" $replicas .Values.quota.tokenPoolSize) }}
{{- end }}
{{- if and .Values.auth.mountTokenAsFile (ne .Values.auth.mode "token") }}
{{- fail (printf "auth.mountTokenAsFile needs auth.mode=token: with %s %s" .Values.auth.mode (ternary "the service mints its own tokens" "the credentials file is mounted already" (eq .Values.auth.mode "keyPair"))) }}
{{- end }}
{{- /* values.schema.json requires the chosen mode's values when the chart renders the Secret. */}}
{{- if .Values.auth.existingSecret }}
{{- if or .Values.auth.token .Values.auth.keyId .Values.auth.key .Values.auth.credentials .Values.kafka.secretConfig }}
{{- fail (printf "auth.existingSecret is set: put the credentials into Secret %q (keys: auth.secretKeys) and leave auth.token, auth.keyId, auth.key, auth.credentials and kafka.secretConfig empty" .Values.auth.existingSecret) }}
{{- end }}
{{- end }}
{{- if has (include "dcr-stream.dlqTopic" .) .Values.kafka.topics }}
{{- fail "kafka.dlqTopic is one of kafka.topics: dead letters would be consumed again" }}
{{- end }}
{{- range .Values.kafka.highPriorityTopics }}
{{- if not (has . $.Values.kafka.topics) }}
{{- fail (printf "kafka.highPriorityTopics: %q is not one of kafka.topics, so it would never be consumed" .) }}
{{- end }}
{{- end }}
{{- range $key := list "sasl.password" "ssl.key.password" "sasl.oauthbearer.client.secret" "ssl.keystore.password" "ssl.key.pem" }}
{{- if hasKey $.Values.kafka.config $key }}
{{- fail (printf "kafka.config[%q] is a secret: move it to kafka.secretConfig (it is then kept in the Secret)" $key) }}
{{- end }}
{{- end }}
{{- range $key, $value := dict "bootstrap.servers" "kafka.bootstrapServers" "group.id" "kafka.groupId" "group.instance.id" "kafka.staticMembership" }}
{{- if hasKey $.Values.kafka.config $key }}
{{- fail (printf "kafka.config[%q] is not allowed: set %s instead" $key $value) }}
{{- end }}
{{- end }}
{{- end }}
