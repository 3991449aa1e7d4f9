# Two commands matter: `make demo` (toy pipeline end to end) and `make test` (the suite;
# `make test-fast` is its fast tier, the tests not marked slow).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo ablation rehearsal

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VPY) -m demo

ablation: $(STAMP)
	$(VPY) -m demo --ablation

# the README's VOC commands as printed, on a synthetic VOC-shaped folder (bench/rehearsal.py)
rehearsal: $(STAMP)
	$(VPY) -m bench.rehearsal
