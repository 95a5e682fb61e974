# Two commands on a fresh machine: `make serve` (runs the service) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# cpu|gpu picks onnxruntime or onnxruntime-gpu (never both); train brings torch for export.
EXTRAS ?= cpu,train,dev
PYTEST_ARGS ?=
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install test test-fast lint format serve bundle bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# onnxruntime and onnxruntime-gpu share one module: remove the other build first.
	$(BIN)/python -m pip uninstall -q -y $(if $(findstring gpu,$(EXTRAS)),onnxruntime,onnxruntime-gpu) 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check service model_export training tests benchmarks scripts
	$(BIN)/ruff format --check service model_export training tests benchmarks scripts
	$(BIN)/mypy service model_export training benchmarks scripts

format: install
	$(BIN)/ruff check --fix service model_export training tests benchmarks scripts
	$(BIN)/ruff format service model_export training tests benchmarks scripts

# Make sure a model bundle exists (default: the official Cnn14; PANNS_MODEL=<name> or
# PANNS_CHECKPOINT=<path> to choose another), then run the service on it.
bundle: install
	$(BIN)/python -m model_export.ensure

serve: bundle
	PANNS_MODELS="$${PANNS_MODELS:-$$($(BIN)/python -m model_export.ensure --print-dir)}" \
		$(BIN)/python -m service

bench: install
	$(BIN)/python benchmarks/engine.py --arch Cnn14 --batch 8

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
