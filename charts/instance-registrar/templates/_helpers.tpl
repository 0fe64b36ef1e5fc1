{{/* The chart name, or nameOverride. */}}
{{- define "instance-registrar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: fullnameOverride, else the release name (with the chart name unless it
already holds it), at most 63 characters. */}}
{{- define "instance-registrar.fullname" -}}
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

{{/* Labels that select the controller's Pods; they never change after install. */}}
{{- define "instance-registrar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "instance-registrar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "instance-registrar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "instance-registrar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{/* The ServiceAccount the controller runs as. */}}
{{- define "instance-registrar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "instance-registrar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace of the leader election Lease. */}}
{{- define "instance-registrar.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/* Whether a PodDisruptionBudget is made. */}}
{{- define "instance-registrar.pdb" -}}
{{- if or .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The prefix of the users' ClusterRoles: the full name, and with watchNamespace the release
namespace too, so that releases of the same name in other namespaces do not collide. */}}
{{- define "instance-registrar.userRolePrefix" -}}
{{- if (include "instance-registrar.watchNamespaces" . | fromJsonArray) }}
{{- printf "%s-%s" (include "instance-registrar.fullname" .) .Release.Namespace }}
{{- else }}
{{- include "instance-registrar.fullname" . }}
{{- end }}
{{- end }}

{{/* The namespaces watched, as a JSON list: watchNamespace and watchNamespaces together, each
once (empty: every namespace). */}}
{{- define "instance-registrar.watchNamespaces" -}}
{{- $list := list -}}
{{- with .Values.watchNamespace }}{{ $list = append $list . }}{{ end -}}
{{- range .Values.watchNamespaces }}{{ if not (has . $list) }}{{ $list = append $list . }}{{ end }}{{ end -}}
{{- toJson $list -}}
{{- end }}

{{/* What the controller may do in each namespace it watches (a Role there, or the ClusterRole). */}}
{{- define "instance-registrar.namespacedRules" -}}
- apiGroups: ["registrar.dev"]
  resources: ["instanceregistrations"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["registrar.dev"]
  resources: ["instanceregistrations/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
