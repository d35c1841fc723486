# The two first commands: `make run` and `make test` (see README.md).
VENV ?= .venv
BIN := $(VENV)/bin
DEV_PKI := var/dev-pki
PYTHON ?= python3

.PHONY: run test check lint clean servers bench screenshots

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Serve on https://127.0.0.1:8443 in dry-run mode with a local test PKI,
# unless TLS_CERT_FILE (or CRT) says which certificate to use.
run: $(BIN)/.installed
	@export DRY_RUN="$${DRY_RUN-1}" ROUTES="$${ROUTES-*/*}"; \
	if [ -z "$${TLS_CERT_FILE}$${CRT}" ]; then \
		[ -f $(DEV_PKI)/ca.pem ] || $(BIN)/flask --app app dev-certs --dir $(DEV_PKI) || exit 1; \
		export TLS_CERT_FILE=$(DEV_PKI)/server.pem TLS_KEY_FILE=$(DEV_PKI)/server.key \
			QUAY_CA_FILE="$${QUAY_CA_FILE-$(DEV_PKI)/ca.pem}"; \
		echo "Try it: $(BIN)/flask --app app send-sample https://127.0.0.1:8443/incoming --cert $(DEV_PKI)/quay.pem --key $(DEV_PKI)/quay.key --ca $(DEV_PKI)/ca.pem"; \
	fi; \
	exec $(BIN)/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:8443 wsgi:app

# The suite runs against SQLite and a private PostgreSQL server it starts itself
# (or QUAY_TEST_POSTGRESQL_URL's), and the real proxies and podman (`servers` below).
# GitHub's OpenAPI description (npm's @octokit/openapi) checks the requests the tests capture.
OPENAPI := var/openapi/node_modules/@octokit/openapi/package.json
# axe-core (npm) checks the operator's page for accessibility in Chromium (tests/test_admin_browser.py).
AXE := var/axe/node_modules/axe-core/axe.min.js

# Three test processes at once (pytest-xdist, a file to each): most tests wait on a server, not on a core. The tests
# marked `serial` assert the service's answer time under a flood they make themselves: they run after, alone.
# pytest's 5 (no test selected) is no failure when PYTEST_ARGS names tests of one phase only.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q
test: $(BIN)/.installed servers $(OPENAPI) $(AXE)
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PYTEST) -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The inner loop, in about half a minute: lint, and the tests that start no server (no service, PostgreSQL,
# pebble, Chromium, proxy or image). `make test` before a commit.
check: $(BIN)/.installed
	$(BIN)/ruff check .
	$(PYTEST) -n 2 -m "not server" $(PYTEST_ARGS) || [ $$? -eq 5 ]

$(OPENAPI):
	@if command -v npm >/dev/null; then \
		npm install --silent --no-audit --no-fund --prefix var/openapi @octokit/openapi@23.0.2; \
	else \
		echo "npm is missing: the OpenAPI checks will be skipped"; \
	fi

$(AXE):
	@if command -v npm >/dev/null; then \
		npm install --silent --no-audit --no-fund --prefix var/axe axe-core@4.14.1; \
	else \
		echo "npm is missing: the accessibility check will be skipped"; \
	fi

# The operator's page's screenshots in docs/images/, taken by its Chromium tests.
screenshots: $(BIN)/.installed servers $(AXE)
	SCREENSHOTS=docs/images $(BIN)/python -m pytest -q tests/test_admin_browser.py

# The real programs the suite runs, installed from Debian's packages when missing and
# allowed (root, apt-get), in one go: PostgreSQL (unless QUAY_TEST_POSTGRESQL_URL names a
# server), podman with runc and debootstrap (tests/test_image.py), nginx with its stream
# module and HAProxy (tests/test_proxies.py; Traefik comes from requirements-dev.txt),
# pebble and pebble-challtestsrv, Let's Encrypt's test CA (tests/test_acme.py), Prometheus with
# promtool (tests/test_monitoring.py), Chromium and its driver (tests/test_admin_browser.py).
servers:
	@missing=""; \
	[ -n "$${QUAY_TEST_POSTGRESQL_URL}" ] || command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| missing="$$missing postgresql"; \
	for tool in podman podman-compose runc debootstrap haproxy pebble prometheus chromium; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v nginx >/dev/null || missing="$$missing nginx-light"; \
	[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$$missing libnginx-mod-stream"; \
	if [ -z "$$missing" ]; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "missing:$$missing; the tests that run them will be skipped (as root: apt-get install$$missing)"; \
	fi

# What a notification costs, beside nginx and stock gunicorn + Flask (bench/compare.py);
# what a refused long certificate chain costs, beside a forged certificate (bench/chain_bench.py).
bench: $(BIN)/.installed
	@command -v nginx >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; }
	$(BIN)/python -m bench.compare $(BENCH_ARGS)
	$(BIN)/python -m bench.chain_bench

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache
