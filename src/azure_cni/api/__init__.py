"""The NodeIPPool resource: the only contract between the operator and the node agents."""
