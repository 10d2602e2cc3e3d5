# The two commands: `make run` (the whole stack, locally) and `make test` (everything CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint sandbox-deps image images bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Jobs never run unsandboxed: install bubblewrap when it is missing and we may.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; \
	  else echo "bubblewrap is missing: sudo apt-get install bubblewrap" >&2; exit 1; fi; }

run: $(STAMP) sandbox-deps
	$(VENV)/bin/crucible up

# The Docker backend's runtime image, from Debian packages (no registry needed).
image: $(STAMP)
	$(VENV)/bin/crucible sandbox build-image --if-missing

# The containerised stack's images (compose.yml): a Debian base from packages, then ours.
images: $(STAMP) image
	$(VENV)/bin/crucible sandbox build-image --if-missing --tag crucible-base:latest \
	  --packages python3,python3-venv,ca-certificates
	cp /etc/ssl/certs/ca-certificates.crt deploy/build-ca.crt
	docker build -q -f deploy/Dockerfile -t crucible:latest .
	docker build -q -f deploy/nginx.Dockerfile -t crucible-nginx:latest .

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) sandbox-deps lint
	$(VENV)/bin/pytest

# Every issue-10 benchmark, each a ratio against a baseline measured in the same run, then one
# summary table (also bench-output/summary.md); e.g. `make bench BENCH_ARGS="--rounds 5"`.
# Without a Docker engine the Docker row says "skipped: no engine" instead of failing.
BENCH_ARGS ?=
bench: $(STAMP) sandbox-deps
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory image; \
	  else echo "no Docker engine: its benchmark will be skipped"; fi
	$(PY) -m bench $(BENCH_ARGS)
