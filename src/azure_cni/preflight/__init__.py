"""``azure-cni preflight``: is a cluster, and is each node, ready for azure-cni? Each failed
check says what to do.

- ``node``: what a node must have (python3 for the CNI plugin, portmap and the other chained
  plugins, no CNI configuration that sorts before ours). It reads only the node's files and
  holds no Azure credential, so the agent runs it too and reports it in its pool's AgentReady
  condition.
- ``cluster``: every Node's providerID names a VM, kubelet's ``--max-pods`` fits the pool's
  ``maxIPs``, and what the agents reported.
- ``azure``: the operator's identity reads each node's NIC and may write it and join its
  subnet (the permissions API). It runs with the operator's credential: the chart's Helm test.
"""
