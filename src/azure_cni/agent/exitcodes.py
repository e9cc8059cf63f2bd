"""What ``azure-cni-agent`` returns; its ``--help`` lists them from here."""

from __future__ import annotations

from azure_cni.commandline import ExitCode


class AgentExit(ExitCode):
    OK = 0, "stopped cleanly (SIGTERM or SIGINT); --uninstall done"
    BAD_CONFIGURATION = 1, "bad settings file or flags' values, or no way to the Kubernetes API"
    USAGE = 2, "bad arguments (see --help)"
    REFUSED_TO_START = 3, ("refused to start: its store and the host disagree, and starting "
                           "could hand out a duplicate address (the log lists each conflict)")
    SOCKET_UNAVAILABLE = 4, "its socket is taken by another agent, or its directory is unsafe"
    NO_HOST_PYTHON = 5, "the host has no python3 at agent.hostPython for the CNI plugin"
