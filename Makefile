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

.PHONY: help html test bench clean distclean

help:
	@echo "make html   build the book into $(BUILDDIR)/html (open $(BUILDDIR)/html/index.html)"
	@echo "            and $(BUILDDIR)/bnlit-book.zip (unzip anywhere, open bnlit-book/index.html)"
	@echo "make test   run every test, including a strict build of the book"
	@echo "make bench  time bnlit against PyTorch (if installed); saves docs/data/benchmark.json"
	@echo "make clean  remove build outputs;  make distclean  also remove $(VENV)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The stamp records which extras are installed; pyproject.toml changes re-install.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[docs,test]"
	touch $@

# A failed build forgets what it read (the doctrees), so that the next build
# reports the same warnings again instead of passing on unchanged pages.
html: $(VENV)/.installed
	$(BIN)/sphinx-build -W --keep-going -b html -d $(BUILDDIR)/doctrees docs $(BUILDDIR)/html $(SPHINXOPTS) \
		|| { rm -rf $(BUILDDIR)/doctrees; exit 1; }
	$(BIN)/python docs/_ext/book_zip.py $(BUILDDIR)/html $(BUILDDIR)/bnlit-book.zip
	@echo "The book is at $(BUILDDIR)/html/index.html"

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# A benchmark, not a test: prints a table and saves it for the book's "How fast" page.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench.py --save docs/data/benchmark.json

clean:
	rm -rf $(BUILDDIR) .pytest_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
