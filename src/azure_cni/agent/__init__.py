"""The per-node agent: hands out pool addresses, builds the datapath, serves the CNI shim."""
