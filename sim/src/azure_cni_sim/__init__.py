"""Simulated Azure and a real local control plane, for tests and for trying azure-cni locally."""
