# Two commands do all set-up on a fresh machine with only Python and pip:
#   make demo   -- a real completion on the default model
#   make test   -- ruff, mypy, then the whole suite (with the notebooks and a strict docs build)
#   make docs   -- serve the documentation site locally (mkdocs serve)
#   make notebooks -- re-execute notebooks/ and save their outputs
#   make screenshot -- docs/playground.png, the playground page on the default model
#                      (needs Debian's chromium and chromium-driver)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean docs notebooks screenshot

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sampler complete "The capital of France is" --max-tokens 24 --temperature 0

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -n 2 -q

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

notebooks: $(STAMP)
	$(PY) notebooks/run_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

screenshot: $(STAMP)
	cd tests && ../$(PY) screenshot.py ../docs/playground.png
