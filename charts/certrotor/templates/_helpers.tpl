{{/* Names, labels and RBAC rules shared by the templates. */}}

{{- define "certrotor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "certrotor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "certrotor.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "certrotor.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "certrotor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certrotor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "certrotor.labels" -}}
{{ include "certrotor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: certrotor
{{- if not .Values.plainManifests }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- end }}

{{- define "certrotor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "certrotor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "certrotor.leaseName" -}}
{{- default (printf "%s-leader" (include "certrotor.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "certrotor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Kubernetes API calls the controllers make, and nothing more (scripts/check-packaging.sh
compares the rendered rules with this list; tests/e2e.rs checks the list against the calls the
real binary makes, by User-Agent, through every flow):
- TenantCertificates: list/watch (reads come from the cache); patch adds and removes the
  finalizer (JSON patch on the resource);
- DeviceIdCredentials: get/list/watch (no finalizer: there is nothing to clean up at the vendor);
- both kinds' status: patch; their finalizers: update, because objects we create carry
  ownerReferences with blockOwnerDeletion (an authorization check, not a call);
- secrets: a metadata-only watch across namespaces for the referenced Secrets, get; the
  Device-ID controller writes its output Secret and a "<name>-pending" Secret with server-side
  apply (create: apply may create them), then deletes the pending one;
- configmaps: server-side apply of "<name>-csr" (patch, and create for the first apply);
- events: kube's Recorder creates events and patches repeats into a series.
Leases are granted apart, in the release namespace only (certrotor.leaseRules).
*/}}
{{- define "certrotor.rules" -}}
- apiGroups: [certrotor.io]
  resources: [tenantcertificates]
  verbs: [list, watch, patch]
- apiGroups: [certrotor.io]
  resources: [deviceidcredentials]
  verbs: [get, list, watch]
- apiGroups: [certrotor.io]
  resources: [tenantcertificates/status, deviceidcredentials/status]
  verbs: [patch]
- apiGroups: [certrotor.io]
  resources: [tenantcertificates/finalizers, deviceidcredentials/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.certManager.enabled }}
- apiGroups: [cert-manager.io]
  resources: [certificaterequests]
  verbs: [create, get, list, watch, delete]
{{- end }}
{{- end }}

{{/* Leader election (kube-lease-manager): create cannot be limited by name; get and patch only touch our Lease. */}}
{{- define "certrotor.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "certrotor.leaseName" . | quote }}]
  verbs: [get, patch]
{{- end }}
