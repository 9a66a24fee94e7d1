# Everything runs from .venv (VENV=DIR: another, e.g. one per Python), which this Makefile creates
# and keeps in step with the pins.
# git-annex comes from the PyPI `git-annex` wheel; git-annex finds git-annex-remote-xnat only on
# PATH, so .venv/bin goes first on PATH for every recipe.
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
STAMP := $(VENV)/.installed
export PATH := $(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv test demo bench emulator clean

venv: $(STAMP)

$(STAMP): requirements/constraints.txt setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c requirements/constraints.txt -e '.[devel]'
	touch $@

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 $(PYTEST_ARGS)

demo: $(STAMP)
	PY=$(VENV)/bin/python bash scripts/demo.sh

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)

emulator: $(STAMP)
	$(VENV)/bin/python -m xnat_emulator --demo

clean:
	rm -rf $(VENV) *.egg-info
