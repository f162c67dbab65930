# distilldetect — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed
EXTRAS ?= dev,all,docs
DEMO_ARGS ?= --pretrained

REF_VENV := .venv-reference
REF_PY := $(REF_VENV)/bin/python
REF_STAMP := $(REF_VENV)/.installed

.PHONY: setup data browser test lint bare docs demo bench bench-reference clean

setup: $(STAMP) data browser

# Install torch's CPU build first (from this machine's disk); a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
	# tensorflow-cpu (an older setup) and tensorflow write the same files: keep one
	$(PY) -m pip uninstall -y -q tensorflow-cpu 2>/dev/null || true
	$(PIP) install -e '.[$(EXTRAS)]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch, tensorflow, fastapi, ray, distilldetect" && touch $(STAMP)

# Fashion-MNIST from Debian when missing (root + apt-get); otherwise the loader downloads it.
data:
	@if [ ! -f $(FMNIST_DIR)/t10k-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	      && echo "installed dataset-fashion-mnist" \
	      || echo "warning: could not install dataset-fashion-mnist; the loader will download the data"; \
	  else echo "note: $(FMNIST_DIR) missing and apt-get unusable; the loader will download the data"; fi; \
	fi

# Debian's Chromium for the dashboard's browser test (Playwright drives /usr/bin/chromium).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
	      && echo "installed chromium" \
	      || echo "warning: could not install chromium; the dashboard's browser test will be skipped"; \
	  else echo "note: /usr/bin/chromium missing; the dashboard's browser test will be skipped"; fi; \
	fi

# The bare package (no framework, no extra) in a clean venv: it installs and imports.
BARE := .venv-bare
bare:
	rm -rf $(BARE) && $(PYTHON) -m venv $(BARE)
	$(BARE)/bin/python -m pip --disable-pip-version-check -q install . 2>&1 | grep -v '^WARNING: Location' || true
	cd /tmp && $(CURDIR)/$(BARE)/bin/python $(CURDIR)/scripts/check_bare_install.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint bare
	$(PY) -m pytest -n 2 --dist loadfile

# The documentation site, built strictly (also run by the tests).
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

# The main job: the harmful-drift study on Fashion-MNIST with the shipped teacher and student
# (report, figures and detector/ in results/); `make demo DEMO_ARGS=--train` trains them.
demo: setup
	$(VENV)/bin/distilldetect experiment $(DEMO_ARGS)

# Our benchmark; the reference's too when .venv-reference exists (make bench-reference).
bench: setup
	$(PY) benchmarks/run.py

# The benchmark's reference: alibi-detect 0.13.0 on TensorFlow, in its own venv (~3 GB).
$(REF_STAMP): benchmarks/reference/requirements.txt
	test -x $(REF_PY) || $(PYTHON) -m venv $(REF_VENV)
	$(REF_PY) -m pip --disable-pip-version-check -q install -r benchmarks/reference/requirements.txt
	$(REF_PY) -c "import alibi_detect, tensorflow" && touch $(REF_STAMP)

bench-reference: setup $(REF_STAMP)
	mkdir -p results
	$(PY) benchmarks/run.py --reference --json results/bench.json

clean:
	rm -rf $(VENV) $(BARE) build dist src/*.egg-info .pytest_cache .ruff_cache
