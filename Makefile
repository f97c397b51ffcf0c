# trex: `make demo` and `make test` work on a fresh machine (Python 3.10+, gcc, pip).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.trex-installed
DEMO   ?= demo
NP     ?= 2

.PHONY: install build demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard cext/*.pyx cext/*.pxd cext/*.pxi)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[test,bench,mpich,lint]'
	touch $(STAMP)

# rebuild the Cython kernels in place after editing cext/ (pip did it once at install)
build: install
	$(BIN)/python -m pip install -q 'Cython>=3.0'
	$(BIN)/python setup.py -q build_ext --inplace

demo: install
	bash scripts/demo.sh $(DEMO) $(NP)

test: install
	$(BIN)/python -m pytest -q

bench: install
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/trex bench

lint: install
	$(BIN)/ruff check trex tests bench

clean:
	rm -rf build dist *.egg-info trex/*.so trex/_avx2 trex/*.c cext/*.c .pytest_cache $(DEMO)
