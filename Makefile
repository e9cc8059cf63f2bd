# azure-cni: the two set-up commands are `make demo` and `make test`; each installs what it
# needs (Debian packages, a Python virtual environment, the Go-built Kubernetes tools, the
# container images built without a registry).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
TIER := hack/pytest-tier.sh
# tiers are selected by marker; see pyproject.toml [tool.pytest.ini_options]
UNIT := not netns and not cluster and not e2e

DEMO_STATE := $(CURDIR)/.cache/demo
# prefix of every network namespace the demo creates (another checkout's demo can run beside
# it with another one)
DEMO_PREFIX ?= azdemo

# Go-built tools (hack/build-tools.sh), each only where it is needed: both need CoreDNS (the
# simulated nodes' cluster DNS), Prometheus (the cluster's, in a pod) and the Prometheus
# Operator's CRDs (the chart's ServiceMonitors and PrometheusRule); the tests also need cnitool
# (standalone containers with ports) and promtool (alert and dashboard checks).
TEST_TOOLS := kubernetes etcd helm crictl coredns cnitool promtool prometheus prometheus-operator-crds \
              e2e-network ginkgo agnhost
DEMO_TOOLS := kubernetes etcd helm crictl coredns
# built beside DEMO_TOOLS at the lowest priority, so they only fill the time the others wait
# (module downloads, links); `make demo` does not wait for them: the demo shows Prometheus
# when it is built in time, and the build goes on for the next demo and `make test`
DEMO_BESIDE := prometheus prometheus-operator-crds
# Kubernetes' own e2e specs (docs/conformance.md): make conformance runs e2e.test against the
# demo, with Traefik as its Ingress controller; the e2e tier runs a quick subset of them from
# e2e-network.test (the networking specs only: a fraction of the build)
CONFORMANCE_TOOLS := e2e ginkgo agnhost coredns traefik
E2E_IMAGES := e2e-agnhost e2e-shell e2e-nginx e2e-boom-server

.PHONY: help test demo demo-down deps venv tools demo-tools images lint typecheck contracts check \
        test-unit test-netns test-cluster test-e2e e2e-images conformance bench lock clean

help:
	@echo "make demo       run azure-cni on a simulated Azure VNet (stays up; make demo-down stops it)"
	@echo "make test       install everything, then lint, types, import contracts and every test tier"
	@echo "make test-unit | test-netns | test-cluster | test-e2e   one tier (after make test's set-up)"
	@echo "make conformance  Kubernetes' own networking specs and an Ingress against the running demo"
	@echo "make bench      the benchmarks; numbers go to bench/results/"
	@echo "make images     build localhost/azure-cni:<tag> from the Containerfile (and the simulation's"
	@echo "                other images) without a registry, as OCI archives in .cache/images"

test: deps venv tools check test-unit test-netns test-cluster test-e2e

check: lint typecheck contracts

demo: deps venv demo-tools images
	$(VENV)/bin/azure-cni-sim demo up --state-dir $(DEMO_STATE) --prefix $(DEMO_PREFIX)

demo-down: venv
	$(VENV)/bin/azure-cni-sim demo down --state-dir $(DEMO_STATE)

deps:
	hack/install-deps.sh

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml sim/pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt --upgrade setuptools wheel
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]' -e ./sim
	touch $@

tools:
	hack/build-tools.sh $(TEST_TOOLS)

demo-tools:
	@mkdir -p .cache
	nohup setsid nice -n 19 hack/build-tools.sh $(DEMO_BESIDE) >.cache/build-beside.log 2>&1 &
	hack/build-tools.sh $(DEMO_TOOLS)

images: deps demo-tools
	hack/build-images.sh

e2e-images: deps tools
	hack/build-images.sh $(E2E_IMAGES)

# against the running demo (make demo); results in bench/results/conformance.json
conformance: deps venv
	hack/build-tools.sh $(CONFORMANCE_TOOLS)
	hack/build-images.sh $(E2E_IMAGES) traefik
	$(VENV)/bin/azure-cni-sim conformance --state-dir $(DEMO_STATE) \
	  --results-dir bench/results --work-dir .cache/conformance

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

contracts: venv
	PYTHONPATH=hack $(VENV)/bin/lint-imports

test-unit: venv tools
	$(TIER) unit -m "$(UNIT)"

test-netns: venv
	$(TIER) netns -m "netns and not cluster and not e2e"

test-cluster: venv tools
	$(TIER) cluster -m "cluster and not e2e"

test-e2e: venv tools images e2e-images
	$(TIER) e2e -m "e2e"

bench: deps venv tools
	$(PY) bench/run_all.py

lock: venv
	{ echo "# Exact versions for a reproducible environment: make venv installs with -c constraints.txt."; \
	  echo "# Regenerate with: make lock"; \
	  $(VENV)/bin/pip freeze --exclude-editable; \
	  $(VENV)/bin/pip freeze --all | grep -E '^(setuptools|wheel)=='; } > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
