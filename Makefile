PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,postgres]'
	touch $@

.PHONY: demo test check lint typecheck bench bench-loop bench-waiting bench-growth bench-scale-out bench-replay bench-retention bench-retention-size bench-codec clean
demo: $(BIN)/.installed
	$(BIN)/python -m demo

# The PostgreSQL tests get a throwaway server on loopback (tests/with_postgres.sh).
test: $(BIN)/.installed
	tests/with_postgres.sh $(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

check: lint typecheck test

# Set SAGALOOP_DBOS_PYTHON to a Python with dbos==3.4.0 to add the DBOS anchor.
bench: $(BIN)/.installed
	$(BIN)/python -m bench.checkout

bench-loop: $(BIN)/.installed
	$(BIN)/python -m bench.loop

bench-waiting: $(BIN)/.installed
	$(BIN)/python -m bench.waiting

bench-replay: $(BIN)/.installed
	$(BIN)/python -m bench.replay

bench-retention: $(BIN)/.installed
	$(BIN)/python -m bench.retention latency

bench-retention-size: $(BIN)/.installed
	$(BIN)/python -m bench.retention size

bench-codec: $(BIN)/.installed
	$(BIN)/python -m bench.codec

bench-growth: $(BIN)/.installed
	$(BIN)/python -m bench.growth

bench-scale-out: $(BIN)/.installed
	tests/with_postgres.sh $(BIN)/python -m bench.scale_out

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
