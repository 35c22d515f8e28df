# Two commands for a newcomer: `make html` builds the book, `make test` runs every test.
# Each creates .venv when it is missing and installs what it needs (editable), then runs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Versions the book and the tests were last checked with; see .ci/constraints.txt.
CONSTRAINTS := .ci/constraints.txt
SPHINXOPTS  ?=
BUILDDIR    := docs/_build
# The editions: English sources, and a catalog per page for each translation.
LANGUAGES   := en ja
TRANSLATIONS := ja

.PHONY: help html test bench bench-distributed translations clean distclean

help:
	@echo "make html   build the book, English and Japanese, into $(BUILDDIR)/html (open $(BUILDDIR)/html/index.html)"
	@echo "            and $(BUILDDIR)/bnlit-book.zip (unzip anywhere, open bnlit-book/index.html)"
	@echo "make translations  refresh docs/locales from the English sources; list what is new or fuzzy"
	@echo "make test   run every test, including a strict build of the book"
	@echo "make bench  time both engines against PyTorch (if installed); saves docs/data/benchmark.json"
	@echo "make bench-distributed  time a synchronized step on 4 processes (MPI, torch) against one process"
	@echo "make mutation  mutation score of the fast tests over bnlit/ (a benchmark of the tests, over an hour)"
	@echo "make clean  remove build outputs;  make distclean  also remove $(VENV)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The stamp records which extras are installed; pyproject.toml changes re-install.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[docs,test]"
	touch $@

# One strict build per language, each with its own doctrees; the notebooks'
# execution cache is shared (its key does not depend on the language), so the
# pages run once. A failed build forgets what it read (its doctrees), so that the
# next build reports the same warnings again instead of passing on unchanged pages.
html: $(VENV)/.installed
	@for lang in $(LANGUAGES); do \
		echo "--- building the '$$lang' edition"; \
		$(BIN)/sphinx-build -W --keep-going -b html -D language=$$lang -d $(BUILDDIR)/doctrees/$$lang \
			docs $(BUILDDIR)/html/$$lang $(SPHINXOPTS) || { rm -rf $(BUILDDIR)/doctrees/$$lang; exit 1; }; \
	done
	cp docs/_chooser/index.html $(BUILDDIR)/html/index.html
	$(BIN)/python docs/_ext/book_zip.py $(BUILDDIR)/html $(BUILDDIR)/bnlit-book.zip
	@echo "The book is at $(BUILDDIR)/html/index.html"

# After English edits: extract the messages, merge them into each catalog (new
# ones empty, changed ones fuzzy), and list what is left to translate.
translations: $(VENV)/.installed
	$(BIN)/sphinx-build -q -b gettext docs $(BUILDDIR)/gettext
	$(BIN)/python docs/_ext/catalogs.py figures docs $(BUILDDIR)/gettext
	$(BIN)/sphinx-intl update -p $(BUILDDIR)/gettext -d docs/locales -w 0 $(foreach l,$(TRANSLATIONS),-l $(l))
	@for lang in $(TRANSLATIONS); do $(BIN)/python docs/_ext/catalogs.py status docs/locales/$$lang || true; done

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# A benchmark, not a test: prints a table and saves it for the book's "How fast" page.
bench: $(VENV)/.installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[fast]"  # the compiled engine, to time both engines
	$(BIN)/python benchmarks/bench.py --save docs/data/benchmark.json

# Synchronized batch normalization on 4 local processes (MPI, then torch.distributed with gloo):
# the step's time against one process on the whole batch, and the bytes all-reduced.
bench-distributed: $(VENV)/.installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[mpi]" torch==2.13.0
	BNLIT_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/mpiexec -n 4 $(BIN)/python -m mpi4py benchmarks/distributed.py mpi
	BNLIT_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/torchrun --nproc-per-node 4 --master-addr 127.0.0.1 \
		--master-port 29511 benchmarks/distributed.py torch

# A benchmark of the tests, not a test (not part of `make test`): mutmut plants one small
# bug at a time in bnlit/ and runs the fast tests against each, in a scratch copy under
# build/mutation; mutation/score.py then prints the score per module and every survivor
# that is neither killed nor listed in mutation/equivalent.txt (exit 1 below 90% on a target
# module). 5490 mutants; a whole run took 38 minutes on a shared 2-core machine from a fresh
# clone (venv included). Each mutant runs only the tests that call the mutated function, fastest
# first (tests/conftest.py), so a killed one is cheap and a surviving one costs the whole selection.
# MUTANTS="bnlit.layer*" runs only the mutants whose names match (several patterns may be
# given, space-separated). OMP_NUM_THREADS=1: mutmut forks one process per mutant, and
# torch's thread pool hangs in a forked child. bnlit/engines/numba.py is mutated and reported
# but is no target: mutmut leaves decorated functions (its @_jit kernels) alone, and the
# glue around them is tested only with numba installed, which this target does not install
# (each mutant would recompile the kernels, ~20 s). See mutation/score.py.
MUTANTS ?=
.PHONY: mutation
mutation: $(VENV)/.mutation-installed
	rm -rf build/mutation && mkdir -p build/mutation
	cp -Rp bnlit tests docs pyproject.toml Makefile build/mutation/
	find build/mutation -name __pycache__ -prune -exec rm -rf {} +
	@echo "mutmut is running; its progress goes to build/mutation/mutmut.log"
	cd build/mutation && OMP_NUM_THREADS=1 BNLIT_TEST_WORKER_TIMEOUT=2 ../../$(BIN)/mutmut run --max-children 2 $(MUTANTS) \
		> mutmut.log 2>&1 || { tail -c 3000 mutmut.log; exit 1; }
	$(BIN)/python mutation/score.py build/mutation

$(VENV)/.mutation-installed: $(VENV)/.installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[docs,test,mutation]"
	touch $@

clean:
	rm -rf $(BUILDDIR) .pytest_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
