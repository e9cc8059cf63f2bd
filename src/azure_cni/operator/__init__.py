"""The cluster-wide operator (kopf) that keeps each node's NIC pool at the right size."""
