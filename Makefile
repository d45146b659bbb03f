# Two commands do everything on a fresh machine with Python >= 3.11 and make:
#   make demo   simulate a small crowd, build it with Prefect, print where the report is
#   make test   install the project with its test extras and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test lint schemas clean bench browser fuzz

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "crowdseg needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crowdseg demo reports/demo

test: $(STAMP) browser
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/python -m pytest -q

# make fuzz: the hypothesis properties of tests/test_fuzz.py with 3,000 examples each (make test runs 40)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q tests/test_fuzz.py

# make browser: Debian's Chromium for tests/test_report_browser.py (Playwright drives it; it never downloads one).
# Installs it with apt-get when missing (as root, or through sudo); if that fails, warns and the test skips.
browser:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo -n ); \
	  echo "installing Debian's chromium for the browser tests"; \
	  { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -q >/dev/null 2>&1 \
	         && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; } \
	  || echo "warning: could not install chromium; tests/test_report_browser.py will be skipped"; }

# make bench: install the benchmark peers into the same venv and run the side-by-side benchmarks (~10 min),
# then scale.py (hours on 2 cores: 20k-photo builds; the crowd is simulated once under /work/bench-data/scale).
# imagededup goes in with --no-deps: its torch/torchvision are for its CNN only, and would pull GBs of CUDA.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m pip install -q --no-deps imagededup==0.3.3.post2
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/hash_throughput.py
	$(BIN)/python benchmarks/pair_search.py
	$(BIN)/python benchmarks/dedup_recall.py
	$(BIN)/python benchmarks/merge_accuracy.py
	$(BIN)/python benchmarks/merge_speed.py
	$(BIN)/python benchmarks/report_time.py
	$(BIN)/python benchmarks/qa_defects.py
	$(BIN)/python benchmarks/split_quality.py
	$(BIN)/python benchmarks/stage_costs.py
	$(BIN)/python benchmarks/scale.py

schemas: $(STAMP)
	$(BIN)/crowdseg schemas

clean:
	rm -rf $(VENV) reports/demo build .pytest_cache
