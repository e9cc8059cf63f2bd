"""The agent's VM-only wing: a VM without Kubernetes (``standalone.enabled``).

The pool from the instance metadata service (``imds_source``), Docker Engine's network and
IPAM plugin (``docker_plugin``), the agent that runs both (``standalone``) and its systemd
installer (``install``). Nothing outside this folder imports it but the agent's entry point
and the command line.
"""
