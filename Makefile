# pullcache: `make run` starts the daemon, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What the integration and end-to-end tests drive: a real registry (CNCF Distribution), the
# real clients (skopeo, containerd, podman, dockerd), nginx as the benchmark's reference, htpasswd
# for the basic-auth registry, chromium for the status page, systemd-analyze for
# the unit's security rating, prometheus (promtool and a live Prometheus for deploy/prometheus
# and deploy/grafana), yamllint for deploy/kubernetes. The suite runs its own private
# daemons; it never uses system ones.
TEST_PACKAGES := docker-registry skopeo containerd podman docker.io nginx-light apache2-utils \
	ca-certificates curl chromium systemd prometheus yamllint
# What only the benchmarks drive: wrk (HTTP load at many connections; ApacheBench, from
# apache2-utils above, for HEAD, which Debian's wrk 4.1 cannot do).
BENCH_PACKAGES := wrk
PYTEST_ARGS ?=
# The container image, and what builds it (see `image` below).
IMAGE := build/image/pullcache.oci.tar
IMAGE_PACKAGES := mmdebstrap umoci

.PHONY: run test venv system-deps bench-deps bench bench-peer bench-manifests bench-warm \
	bench-slow bench-chaos bench-stale bench-auth bench-loopback image image-test clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || scripts/ensure-debian-packages python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/pullcache serve $(if $(CONFIG),--config $(CONFIG))

system-deps:
	scripts/ensure-debian-packages $(TEST_PACKAGES)

# The image is built first (about 45 s, again only when pullcache/ or deploy/image/ changed):
# tests/e2e/test_image.py runs it.
test: $(STAMP) system-deps $(IMAGE)
	$(BIN)/pytest $(PYTEST_ARGS)

bench-deps: system-deps
	scripts/ensure-debian-packages $(BENCH_PACKAGES)

bench: $(STAMP) bench-deps
	$(BIN)/python -m bench.blob_throughput

bench-manifests: $(STAMP) bench-deps
	$(BIN)/python -m bench.manifests

bench-peer: $(STAMP) bench-deps
	$(BIN)/python -m bench.vs_distribution

bench-warm: $(STAMP) bench-deps
	$(BIN)/python -m bench.warm

bench-slow: $(STAMP) bench-deps
	$(BIN)/python -m bench.slow_clients

bench-chaos: $(STAMP) bench-deps
	$(BIN)/python -m bench.chaos_soak $(CHAOS_ARGS)

bench-stale: $(STAMP) bench-deps
	$(BIN)/python -m bench.stale_tag

bench-loopback: $(STAMP) bench-deps
	$(BIN)/python -m bench.loopback_send

bench-auth: $(STAMP) bench-deps
	$(BIN)/python -m bench.auth_flood

# The container image (deploy/image/build): a Debian rootfs by mmdebstrap, pullcache from
# PyPI in a venv, packed by umoci into build/image/pullcache.oci.tar. Needs root (or
# MMDEBSTRAP_MODE=unshare). image-test runs only the image's tests.
$(IMAGE): $(STAMP) pyproject.toml $(wildcard deploy/image/*) \
		$(shell find pullcache -type f -not -path '*/__pycache__/*')
	scripts/ensure-debian-packages $(IMAGE_PACKAGES)
	PYTHON=$(BIN)/python deploy/image/build $(dir $(IMAGE))

image: $(IMAGE)

image-test: $(IMAGE) system-deps
	$(BIN)/pytest tests/e2e/test_image.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build
