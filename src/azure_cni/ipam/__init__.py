"""Pool sizing, the release handshake and the node-local address store."""
