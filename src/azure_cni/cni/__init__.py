"""The CNI side: the stdlib-only shim and the protocol types the agent speaks."""
