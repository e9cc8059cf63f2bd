"""The operator's narrow port to Azure, and its adapter on the azure-mgmt clients."""
