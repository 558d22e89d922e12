# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SHELL := /bin/bash

.PHONY: venv test test-nn test-stats test-fast docs demo lint clean

# Find the newest Python >= 3.12: plain names first, then pyenv's own versions.
define FIND_PYTHON
for c in python3.13 python3.12 python3; do \
  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then \
    command -v $$c; exit 0; fi; \
done; \
if command -v pyenv >/dev/null 2>&1; then \
  root=$$(pyenv root); \
  for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])' | sort -t. -k1,1nr -k2,2nr -k3,3nr); do \
    for b in $$root/versions/$$v/bin/python3; do \
      if [ -x $$b ] && $$b -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then echo $$b; exit 0; fi; \
    done; \
  done; \
fi; \
exit 1
endef
export FIND_PYTHON

$(VENV)/.installed: pyproject.toml
	@PYBIN=$$(bash -c "$$FIND_PYTHON") || { echo "error: bayesmoe needs Python >= 3.12 (jax and arviz 1.x require it); none found on PATH or in pyenv. Install python3.12 or newer." >&2; exit 1; }; \
	echo "using $$PYBIN"; \
	[ -x $(PY) ] || $$PYBIN -m venv $(VENV); \
	$(PY) -m pip install --quiet --upgrade pip && \
	$(PY) -m pip install --quiet -e '.[dev]' && touch $@

venv: $(VENV)/.installed

# The Flax layer's tests and the statistical tests run in separate processes, the statistical ones in
# two halves: long processes that compiled many programs hit crashes inside XLA (see
# docs/performance.md), so no process lives through the whole suite. Each half runs on two pytest-xdist
# workers (one per core on CI; whole files per worker).
PYTEST_WORKERS ?= 2
STATS_A := $(sort $(wildcard tests/test_[a-l]*.py))
STATS_B := $(filter-out tests/test_matrix.py,$(sort $(wildcard tests/test_[m-z]*.py)))
PYTEST_STATS := MPLBACKEND=Agg $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=10
# tests/nn (one process, which leaves part of the second core idle) runs beside the statistical halves;
# make prints each part's output when it ends (--output-sync) and fails if any part fails.
test: venv
	$(VENV)/bin/ruff check bayesmoe tests examples benchmarks docs
	$(MAKE) --no-print-directory -j2 --output-sync=target test-nn test-stats

test-nn: venv
	MPLBACKEND=Agg $(PY) -m pytest -q tests/nn

# The generated gate x expert x option matrix (tests/_matrix.py): independent cases, spread case by case.
test-stats: venv
	$(PYTEST_STATS) $(STATS_A)
	$(PYTEST_STATS) $(STATS_B)
	MPLBACKEND=Agg $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist load --durations=10 tests/test_matrix.py

# The quick subset (< 3 min): everything but the tests marked slow.
test-fast: venv
	$(VENV)/bin/ruff check bayesmoe tests examples benchmarks docs
	MPLBACKEND=Agg $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist load -m "not slow" tests

# The documentation site (mkdocs-material + mkdocstrings), API pages generated from __all__.
docs: venv
	$(PY) docs/_make_api.py >/dev/null
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir out/site

demo: venv
	MPLBACKEND=Agg $(PY) examples/quickstart.py

lint: venv
	$(VENV)/bin/ruff check bayesmoe tests examples benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
