# Two commands: `make run` (the embedded default pipeline) and `make test`.
# Both create the virtual environment from the pinned requirements when it is missing.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
STAMP  := $(VENV)/.installed

.PHONY: run test venv lint dry-run report clean-results

$(STAMP): requirements.txt requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -c requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default

test: $(STAMP)
	$(BIN)/pytest -q --durations=10

lint: $(STAMP)
	$(BIN)/snakemake --lint

dry-run: $(STAMP)
	$(BIN)/snakemake -n --profile profiles/default

report: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --report results/report.html

clean-results:
	rm -rf results
