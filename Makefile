# vafusion: `make run` runs the workflow on the demo dataset, `make test` runs the tests.
# Both create or refresh .venv from the pinned requirements first (a no-op when unchanged).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-requirements
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= all

.PHONY: setup demo run test test-envs bench bench-learning bench-missing-audio bench-bootstrap clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt requirements-nodeps.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	@touch $@

demo: setup
	$(SNAKEMAKE) -s workflow/demo.smk --cores 1

run: demo
	$(SNAKEMAKE) --cores $(CORES)

test: setup
	$(VENV)/bin/python -m pytest

# Each rule env's pip part in a fresh venv (about 3 minutes, downloads torch); CI runs it too.
test-envs: setup
	$(VENV)/bin/python -m pytest -m envs tests/test_env_install.py

clean:
	rm -rf results .snakemake

bench: setup
	$(VENV)/bin/python benchmarks/bench_planning.py
	$(VENV)/bin/python benchmarks/bench_features.py
	$(VENV)/bin/python benchmarks/bench_scale.py
	$(VENV)/bin/python benchmarks/bench_egemaps.py
	$(VENV)/bin/python benchmarks/bench_dlib.py
	$(VENV)/bin/python benchmarks/bench_ssl.py
	$(VENV)/bin/python benchmarks/bench_new_streams.py
	$(VENV)/bin/python benchmarks/bench_expression.py

bench-learning: demo
	$(VENV)/bin/python benchmarks/bench_learning.py

# Coverage and null rejection of the bootstrap's intervals per method and number of videos
# (about 15 minutes on 2 cores; docs/benchmarks.md, Bootstrap intervals).
bench-bootstrap: setup
	$(VENV)/bin/python benchmarks/bench_bootstrap.py

# Needs a finished `make run`: the missing-audio curves under both fills, and the scattered
# pattern's context leak measured against audio dropped in the waveform.
bench-missing-audio: setup
	$(VENV)/bin/python benchmarks/bench_missing_audio.py
