# Two entry points: `make demo` (the embedded default run) and `make test` (the full suite).
# Both create .venv with the pinned CPU stack on first use.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-mutations clean

$(STAMP): setup.py requirements/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later pulls a multi-GB CUDA build.
	$(VPY) -m pip install --quiet torch==2.13.0
	$(VPY) -m pip install --quiet -c requirements/ci.txt -r requirements/ci.txt
	$(VPY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(VPY) bash examples/demo.sh

test: $(STAMP)
	$(VPY) -m pytest tests -q -p no:cacheprovider --durations=30; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$status

# The edit-test loop: the tests that start no process (tests/conftest.py marks the others `launches`).
test-fast: $(STAMP)
	$(VPY) -m pytest tests -q -p no:cacheprovider -m "not launches"; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$status

# Planted bugs (tests/mutations/*.patch), each applied to a scratch copy of HEAD: every one must make its tests
# fail. Not part of `make test` (a few minutes); see docs/testing.md for when to run it.
test-mutations: $(STAMP)
	$(VPY) tests/mutations/run.py

clean:
	rm -rf $(VENV) demo_out *.egg-info
