"""What ``azure-cni-operator --help`` says: its description and its exit codes."""

from __future__ import annotations

from azure_cni.commandline import ExitCode

DESCRIPTION = """\
The azure-cni operator: keeps every node's pool of VNet addresses at the right size, adding
and removing secondary ipConfigurations of the node's NIC through Azure Resource Manager.
It is the only part of azure-cni that talks to Azure. The chart's Deployment runs it as

  azure-cni-operator --config /etc/azure-cni/config.yaml"""


class OperatorExit(ExitCode):
    STOPPED = 0, "stopped cleanly (SIGTERM or SIGINT): drained, and the Lease handed over"
    FAILED = 1, ("lost the Lease, or the controller or kopf failed (the log says which; the "
                 "kubelet restarts it as a standby)")
    INVALID_SETTINGS = 2, ("it cannot start as configured: invalid settings, no way to the "
                           "Kubernetes API, or bad arguments")
