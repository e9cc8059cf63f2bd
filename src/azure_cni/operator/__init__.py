"""The cluster-wide operator that keeps each node's NIC pool at the right size."""
