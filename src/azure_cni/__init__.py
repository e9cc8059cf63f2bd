"""azure-cni: pod addresses from the Azure virtual network itself."""

__version__ = "0.1.0"
