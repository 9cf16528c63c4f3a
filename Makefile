# Two commands are the contract (see README.md):
#   make demo   -- set up the local venv, build the mini corpus, train the demo models
#   make test   -- set up the local venv, lint, run the test suite (it includes tests/test_packaging.py: build the
#                  wheel, install it into a throwaway venv, smoke-test it with the compiled soft-DTW kernel)
# Every package version comes from constraints.txt (the lock), exported as PIP_CONSTRAINT.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(abspath $(VENV))/bin/python
export PIP_CONSTRAINT := $(abspath constraints.txt)
STAMP := $(VENV)/.installed

SUITE ?= main
EVIDENCE_OUT ?= evidence_out

.PHONY: setup demo test lint test-fast clean-demo evidence

setup: $(STAMP)

$(STAMP): setup.py constraints.txt requirements-dev.txt scripts/setup_venv.sh
	bash scripts/setup_venv.sh "$(PYTHON)" "$(VENV)"
	touch $(STAMP)

lint: setup
	$(VPY) -m ruff check setup.py fairseq_plugins manifests tests benchmarks scripts examples evidence

test: setup lint
	$(VPY) -m pytest -ra --durations=15 tests

test-fast: setup
	$(VPY) -m pytest -ra -m "not slow" tests

demo: setup
	bash scripts/demo.sh "$(VPY)"

# `make evidence` (SUITE=main|mgf|csc|slicer|simsiam_recon): train the suite's runs at its fixed budget, probe
# them, and replace the suite's section of EVIDENCE.md; re-running resumes (finished steps are not redone)
evidence: setup
	$(VPY) -m evidence --suite $(SUITE) --out $(EVIDENCE_OUT) --evidence-md EVIDENCE.md

clean-demo:
	rm -rf demo_out
