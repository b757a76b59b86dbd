# Two commands set everything up on a fresh machine: `make lab` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LAB_ARGS ?=
NBVAL := MINIDALLE_FAST=1 $(PY) -m pytest --nbval-lax --nbval-current-env \
	--nbval-sanitize-with notebooks/nbval_sanitize.cfg -p no:cacheprovider

.PHONY: lab test unit notebooks bench assignments classroom clean-venv

# The venv is rebuilt whenever requirements.txt or pyproject.toml change.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# jupyter-config/ (this project's Jupyter settings, found before the user's): no "Jupyter news?"
# pop-up, no update check, Markdown opens rendered. The course opens on its index, notebooks/README.md.
lab: $(VENV)/.installed  ## set up and open the course in JupyterLab
	JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter-config" $(PY) -m jupyter lab --notebook-dir=notebooks $(LAB_ARGS) \
		notebooks/README.md

test: $(VENV)/.installed  ## set up, then unit tests and every notebook under nbval (fast mode)
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(NBVAL) notebooks/

unit: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider tests

notebooks: $(VENV)/.installed
	$(NBVAL) notebooks/

assignments: $(VENV)/.installed  ## student versions of the notebooks in assignments/ (docs/TEACHERS.md)
	$(PY) tools/make_assignments.py

classroom: $(VENV)/.installed  ## the whole nbgrader loop over every notebook with exercises (docs/TEACHERS.md)
	$(PY) tools/classroom.py

bench: $(VENV)/.installed  ## writes benchmarks/results.json and benchmarks/results.md
	$(PY) benchmarks/run.py

clean-venv:
	rm -rf $(VENV)
