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

.PHONY: run test venv system-deps bench-deps bench bench-peer bench-manifests bench-warm \
	bench-slow bench-chaos bench-stale bench-auth clean

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

test: $(STAMP) system-deps
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

bench-auth: $(STAMP) bench-deps
	$(BIN)/python -m bench.auth_flood

clean:
	rm -rf $(VENV) .pytest_cache
