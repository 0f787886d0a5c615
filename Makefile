# `make test` and `make demo` create .venv on first use, install delfi into it, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,viz,cv,ransac,index,asmk,train,demo,sfm]"
	touch $(STAMP)

install: $(STAMP)

# The fast tests run in two pytest-xdist workers of one thread each (they are mostly Python-bound),
# with the slow tests marked one_thread (results independent of the thread count, or fixed to one);
# the other slow ones (training, real-data numbers, whose values depend on the thread count) run
# after, in one process with torch's default threads, as they were measured.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow or one_thread" -n 2 --dist loadfile
	$(BIN)/python -m pytest -q -m "slow and not one_thread"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile

demo: $(STAMP)
	$(BIN)/delfi demo

bench: $(STAMP)
	$(BIN)/python benchmarks/extract_speed.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
