# fairsqueeze: the everyday commands. `make bench` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
SUITE  ?= default
ARGS   ?=
DB     ?=
DBARG  := $(if $(DB),--db $(DB))
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup bench verdicts report leaderboard test test-all perf check clean

$(BIN)/fairsqueeze: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing pulls the multi-GB CUDA wheels
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/fairsqueeze

# Runs the suite; finished runs are skipped, so a second call takes seconds. Ends by
# writing the suite's report and the leaderboard (also after failed runs) and printing their paths.
# DB=URL selects the results database for all three steps (default results/fairsqueeze.db).
# First fetches the small tabular sets that are absent (checksums verified; a set that cannot be
# fetched, e.g. without a network, is one line and the suite runs on what is there).
bench: setup
	$(BIN)/fairsqueeze data fetch adult compas german || true
	$(BIN)/fairsqueeze run $(SUITE) --skip-missing-data $(DBARG) $(ARGS); status=$$?; \
	$(BIN)/fairsqueeze report $(SUITE) $(DBARG) && $(BIN)/fairsqueeze leaderboard $(DBARG) && exit $$status

# The verdict suite (bench/suites/verdicts.yaml): every claim exercised, in about an hour on 2 cores.
# All cores compute (--jobs); the first seed runs first and each entry that changed no prediction
# is named (--smoke-check). Then the suite's report and the leaderboard, as for `make bench`, with the
# post-processing bar's claims (reports/claims_bar.yaml) beside the papers'.
verdicts: setup
	$(BIN)/fairsqueeze data fetch adult compas german || true
	$(BIN)/fairsqueeze run verdicts --jobs $(JOBS) --smoke-check --skip-missing-data $(DBARG) $(ARGS); status=$$?; \
	$(BIN)/fairsqueeze report verdicts --claims reports/claims_bar.yaml $(DBARG) && \
	$(BIN)/fairsqueeze leaderboard --claims reports/claims_bar.yaml $(DBARG) && exit $$status

# HTML report of one suite (results/reports/SUITE/index.html) with CSV/JSON/LaTeX/Markdown exports.
report: setup
	$(BIN)/fairsqueeze report $(SUITE) $(DBARG) $(ARGS)

# HTML leaderboard of every stored task and model (results/leaderboard/index.html).
leaderboard: setup
	$(BIN)/fairsqueeze leaderboard $(DBARG) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# Everything, the slow paper-protocol tests included.
test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow" $(ARGS)

# Benchmarks, side by side with their references; the figures (extra_info) land in results/perf.json.
perf: setup
	mkdir -p results
	$(BIN)/python -m pytest -q tests/perf -o addopts="" --benchmark-only --benchmark-columns=min,mean,max,rounds --benchmark-json=results/perf.json $(ARGS)

# Byte-compiles every package and runs the long crash test (kills at random points).
check: setup
	$(BIN)/python -m compileall -q bench methods datasets reports leaderboard
	$(BIN)/python -m pytest -q -m slow tests/test_crash.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
