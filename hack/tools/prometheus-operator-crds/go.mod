module azurecni.local/tools/prometheus-operator-crds

go 1.26

// Only the CRDs are used (example/prometheus-operator-crd in the module): hack/build-tools.sh
// downloads this pinned, checksummed module and copies them into the tool cache.
require github.com/prometheus-operator/prometheus-operator v0.85.0
