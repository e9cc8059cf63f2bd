{{/*
Checks values.schema.json cannot express (it sees one field at a time). The same rules are
enforced again where they really matter: the settings loader refuses the file at start-up
(azure_cni.api.settings) and the CRD's CEL rules refuse a bad NodeIPPool spec. Failing here
only moves the error to `helm install` time, where the admin is looking.
*/}}
{{- define "azure-cni.validate" -}}
{{- $pool := .Values.pool }}
{{- if gt (int $pool.minIPs) (int $pool.maxIPs) }}
{{- fail (printf "pool.minIPs (%v) must not exceed pool.maxIPs (%v)" $pool.minIPs $pool.maxIPs) }}
{{- end }}
{{- if gt (int $pool.minFreeIPs) (int $pool.maxFreeIPs) }}
{{- fail (printf "pool.minFreeIPs (%v) must not exceed pool.maxFreeIPs (%v)" $pool.minFreeIPs $pool.maxFreeIPs) }}
{{- end }}
{{- $az := .Values.azure }}
{{- range $kind := list "read" "write" }}
{{- $reserve := index $az (printf "%sReserve" $kind) }}
{{- $burst := index $az (printf "%sBurst" $kind) }}
{{- if ge (int $reserve) (int $burst) }}
{{- fail (printf "azure.%sReserve (%v) must be below azure.%sBurst (%v)" $kind $reserve $kind $burst) }}
{{- end }}
{{- end }}
{{- $op := .Values.operator }}
{{- if not (and (lt (float64 $op.retryPeriodSeconds) (float64 $op.renewDeadlineSeconds)) (lt (float64 $op.renewDeadlineSeconds) (float64 $op.leaseDurationSeconds))) }}
{{- fail (printf "operator: leader election needs retryPeriodSeconds (%v) < renewDeadlineSeconds (%v) < leaseDurationSeconds (%v)" $op.retryPeriodSeconds $op.renewDeadlineSeconds $op.leaseDurationSeconds) }}
{{- end }}
{{- if ge (float64 $op.drainSeconds) (float64 .Values.operatorDeployment.terminationGracePeriodSeconds) }}
{{- fail (printf "operator.drainSeconds (%v) must be below operatorDeployment.terminationGracePeriodSeconds (%v): the kubelet kills the operator at the end of its grace period, before it could release the Lease" $op.drainSeconds .Values.operatorDeployment.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and (gt (int .Values.operatorDeployment.replicas) 1) (not $op.leaderElection) }}
{{- fail (printf "operatorDeployment.replicas is %v but operator.leaderElection is false: replicas without leader election would each write the same NICs from their own view" .Values.operatorDeployment.replicas) }}
{{- end }}
{{- if and .Values.admissionPolicy.enabled (semverCompare "<1.32.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "admissionPolicy.enabled needs Kubernetes 1.32 or later (found %s): older API servers do not put the node's name in the agent's service account token, so the policy would refuse every status write of the agent. Upgrade the cluster, or set admissionPolicy.enabled=false and accept that an agent could write any node's pool status." .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}
