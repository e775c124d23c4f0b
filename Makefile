# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
PG_URL ?= $(or $(TEST_DATABASE_URL),postgresql://postgres@127.0.0.1:5432/test)

.PHONY: run test test-sqlite test-postgres test-faults typecheck fuzz lint format migrate bench clean

$(DEPS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: $(DEPS)  ## serve on 127.0.0.1:8000 with the embedded SQLite database
	$(PY) -m compileall -q service migrations  # bytecode, so that a start need not compile
	$(PY) -m service init-env
	$(PY) -m service migrate
	$(PY) -m service serve

migrate: $(DEPS)
	$(PY) -m service migrate

lint: $(DEPS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(DEPS)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: lint typecheck test-sqlite test-postgres  ## lint, types, then the suite on SQLite and on PostgreSQL

typecheck: $(DEPS)
	$(PY) -m mypy --strict service client/src/algoways_store_client

test-sqlite: $(DEPS)
	env -u TEST_DATABASE_URL $(PY) -m pytest -q -p no:cacheprovider

# Fails when REQUIRE_POSTGRES is set (CI) and no server answers; otherwise says it skipped.
test-postgres: $(DEPS)
	@if $(PY) -m tests.pg_available '$(PG_URL)'; then \
		echo "== PostgreSQL leg =="; \
		TEST_DATABASE_URL='$(PG_URL)' $(PY) -m pytest -q -p no:cacheprovider; \
	elif [ -n "$$REQUIRE_POSTGRES" ]; then \
		echo "PostgreSQL is required but not reachable (TEST_DATABASE_URL)"; exit 1; \
	else \
		echo "== SKIPPED the PostgreSQL leg: no server answers (set TEST_DATABASE_URL to run it) =="; \
	fi

# Outages, network faults and shutdowns, against a private PostgreSQL cluster each test starts
# (initdb/pg_ctl) and a live server; not collected by a plain `pytest`.
test-faults: $(DEPS)
	$(PY) -m pytest -q -p no:cacheprovider tests/faults

# The fuzzing gate: schemathesis (every check, every phase) against a live server on SQLite, then
# on PostgreSQL (skipped when no server answers, failing when REQUIRE_POSTGRES is set).
# Deeper runs: make fuzz FUZZ_SECONDS=1800; another sequence: FUZZ_SEED=…
FUZZ_SECONDS ?= 180
FUZZ_SEED ?= 20251130
fuzz: $(DEPS)
	TEST_DATABASE_URL='$(PG_URL)' $(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)

bench: $(DEPS)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
