"""Value sets an admin would really install with, shared by the render and the API-server tests."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from azure_cni.api.settings import Settings, settings_to_mapping

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0b5d7e33-6c2a-4e1e-9d7c-3f2a1b4c5d6e"
IDENTITY_CLIENT_ID = "5e4f3a2b-1c0d-4e9f-8a7b-6c5d4e3f2a1b"
#: a client secret that must appear nowhere but in the Secret object
CLIENT_SECRET = "Zq8~xS3cr3t.V4lue-that_must-n0t-leak"

SETTINGS_SECTIONS = ("pool", "azure", "operator", "agent", "snat", "podNetworking")
#: settings of a VM without Kubernetes (``azure-cni install standalone``), never in the chart
STANDALONE_ONLY_SECTIONS = ("standalone",)

#: every monitoring value on, as an admin with kube-prometheus-stack would set them
MONITORING_ALL_ON: dict[str, Any] = {
    "service": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "interval": "15s"},
    "scrapeAnnotations": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Networking"}},
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "workload-identity": {
        "azure": {"credential": "workloadIdentity"},
        "credentials": {"workloadIdentity": {"clientID": CLIENT_ID, "tenantID": TENANT_ID}},
    },
    "managed-identity": {
        "azure": {"credential": "managedIdentity", "managedIdentityClientID": IDENTITY_CLIENT_ID},
    },
    "service-principal-secret-created": {
        "azure": {"credential": "servicePrincipal"},
        "credentials": {"servicePrincipal": {"tenantID": TENANT_ID, "clientID": CLIENT_ID,
                                             "clientSecret": CLIENT_SECRET}},
    },
    "service-principal-existing-secret": {
        "azure": {"credential": "servicePrincipal"},
        "credentials": {"servicePrincipal": {"existingSecret": "azure-sp"}},
    },
    "snat-off": {
        "snat": {"enabled": False, "blockWireserver": False, "blockInstanceMetadata": False},
    },
    "custom-pools-and-paths": {
        "pool": {"minIPs": 16, "maxIPs": 64, "batchSize": 4, "minFreeIPs": 4, "maxFreeIPs": 12,
                 "releaseDelaySeconds": 600},
        "azure": {"writeQPS": 0.5, "writeReserve": 50, "copyLoadBalancerPools": True,
                  "subscriptions": {"00000000-0000-0000-0000-000000000001":
                                    {"writeReserve": 100, "readQPS": 20.0}}},
        "operator": {"healthPort": 9808, "metricsPort": 9809},
        "agent": {"socketPath": "/var/run/acni/agent.sock", "stateDir": "/var/lib/acni",
                  "cniBinDir": "/usr/libexec/cni", "cniConfDir": "/etc/cni/conf.d",
                  "metricsPort": 9811, "mtu": 1400, "hostPython": "/usr/local/bin/python3"},
        "snat": {"nonMasqueradeCIDRs": ["10.0.0.0/8", "192.168.0.0/16"]},
        "agentDaemonSet": {"maxUnavailable": "20%"},
    },
    "admission-policy-off": {"admissionPolicy": {"enabled": False}},
    "monitoring-all-on": {"monitoring": MONITORING_ALL_ON},
}


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``, mappings merged key by key (as helm merges values)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expected_settings_file(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings document the chart should render for ``values``: code defaults + overrides."""
    overrides = {k: v for k, v in values.items() if k in SETTINGS_SECTIONS}
    defaults = {k: v for k, v in settings_to_mapping(Settings()).items()
                if k in SETTINGS_SECTIONS}
    return merged(defaults, overrides)
