# Two commands do everything on a fresh machine with Python >= 3.11 and make:
#   make demo   simulate a small crowd, build it with Prefect, print where the report is
#   make test   install the project with its test extras and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "crowdseg needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crowdseg demo reports/demo

test: $(STAMP)
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/python -m pytest -q

schemas: $(STAMP)
	$(BIN)/crowdseg schemas

clean:
	rm -rf $(VENV) reports/demo build .pytest_cache
