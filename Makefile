# secagg-dp: `make run` and `make test` work as the first command on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist

export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install system-packages run test bench lint docs shell clean mutate

install: $(STAMP) system-packages

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (tensorflow-privacy 0.9.0 needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian's Fashion-MNIST and Chromium (browser tests). Skipped when already present or
# when apt-get is not usable; the code then says what is missing.
system-packages:
	@need=""; \
	[ -d $(FASHION_DIR) ] || need="$$need dataset-fashion-mnist"; \
	[ -x /usr/bin/chromium ] || need="$$need chromium"; \
	if [ -n "$$need" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install$$need"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  else echo "note: could not install$$need (needs root and apt-get)"; fi; \
	fi

# The demo: the HTTP engine (a server subprocess, devices over signed HTTP) with the
# defaults of clients/options.py: fashion, 1000 devices, 50 a round, 14 rounds, ddgauss
# z = 1.2, federated evaluation on (73.1 % accuracy at amplified ε 8.55, δ = 1e-5; about
# 2 min on 2 busy cores).
run: install
	$(PY) -m clients run --engine http

test: install
	$(PY) -m pytest -q

# Flower 1.41 lives in its own venv (its pins clash with ours); only `make bench` needs it.
FLOWER_VENV := benchmarks/.flower-venv

$(FLOWER_VENV)/.installed:
	test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install -q 'flwr==1.41.0'
	touch $@

# pfl-research and Flower's Ray simulation, the external baselines of `benchmarks sim`, each
# in its own venv too; their pins live in benchmarks/baselines.py (the stamp records them).
PFL_VENV     := benchmarks/.pfl-venv
FLWRSIM_VENV := benchmarks/.flwrsim-venv

$(PFL_VENV)/.installed: | $(STAMP)
	PYTHON=$(PYTHON) $(PY) -m benchmarks.baselines setup pfl

$(FLWRSIM_VENV)/.installed: | $(STAMP)
	PYTHON=$(PYTHON) $(PY) -m benchmarks.baselines setup flwrsim

bench: install $(FLOWER_VENV)/.installed $(PFL_VENV)/.installed $(FLWRSIM_VENV)/.installed
	$(PY) -m benchmarks all

# Mutation testing of secagg/, dp/ and server/round.py (issue 16; config in pyproject.toml
# [tool.mutmut]). Not part of `make test`: a full run takes hours on 2 cores (see
# benchmarks/results/mutation.md). MUTANTS='secagg.shamir*' restricts it to some modules;
# results accumulate in mutants/ (gitignored) between runs.
MUTANTS ?=
MUTATE_JOBS ?= 2
mutate: install
	$(PY) -m benchmarks mutation --run --jobs $(MUTATE_JOBS) $(MUTANTS)

lint: install
	$(VENV)/bin/ruff check secagg dp server clients benchmarks tests
	$(VENV)/bin/mypy

# API reference (pdoc) of secagg, dp, server and clients, built the way the test suite
# checks it (tests/test_docs.py): any pdoc warning fails the build. Open $(DOCS_DIR)/index.html.
DOCS_DIR ?= .docs-build

docs: install
	$(PY) -m tests.test_docs $(DOCS_DIR)

# An interactive bash with the venv activated (`python -m ...`, `secagg-dp ...`); exit to
# leave. The venv is activated after ~/.bashrc, which may put pyenv's shims first in PATH.
shell: install
	@echo "venv $(VENV) active in this shell; 'exit' to leave"
	@rc=$$(mktemp); trap 'rm -f "$$rc"' EXIT; \
	printf '[ -f ~/.bashrc ] && . ~/.bashrc\n. "%s/bin/activate"\n' "$(CURDIR)/$(VENV)" > "$$rc"; \
	bash --rcfile "$$rc" -i

clean:
	rm -rf $(DOCS_DIR) $(VENV) $(FLOWER_VENV) $(PFL_VENV) $(FLWRSIM_VENV) .pytest_cache .mypy_cache .ruff_cache
