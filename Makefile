# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: run test bench soak clean install

# Fashion-MNIST for the image streams: Debian's package puts the idx files under /usr/share/datasets/fashion-mnist
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

install: $(STAMP) $(FASHION_MNIST)

$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: as root, apt-get install -y dataset-fashion-mnist" >&2; fi

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tideflow run linkload --runner ray

test: $(STAMP) $(FASHION_MNIST)
	$(BIN)/python -m pytest -q --durations=15

# Every benchmark in turn (about 15 minutes on 2 cores); each writes bench/results/<name>.json.
BENCHES := runner_overhead stages tracking_overhead learning_cost peers memory scaling
bench: $(STAMP)
	@start=$$(date +%s); for b in $(BENCHES); do \
	  echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit $$?; \
	done; echo "make bench: all $(words $(BENCHES)) benchmarks in $$(( $$(date +%s) - start )) s"

# Ten minutes of one pipeline on the Ray runner: throughput and memory over time (bench/soak.py).
soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) runs mlruns mlartifacts mlflow.db .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
