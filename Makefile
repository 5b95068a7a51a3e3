# One entry point for people and CI. Every target runs from the repository
# root; the virtualenv lives in .venv so every tool finds the same packages.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FLEET := $(PY) scripts/fleet.py
# Scaling target for `make scale N=3`.
N ?=
# Extra arguments for the load test, e.g. `make loadtest ARGS="--concurrency 8"`.
ARGS ?=

.PHONY: setup test test-fast run-worker tiny-model serve stop restart status reload \
        rolling-restart scale monitor logs verify install-system loadtest bench bench-gpu soak fuzz long lint

# The stamp makes `make setup` cheap when nothing changed, and re-runs pip
# whenever requirements.txt does.
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	scripts/setup.sh
	touch $@

# The tests also need nginx, ffmpeg and chromium (the page's browser test):
# installed with apt when missing, as for CI.
test: setup
	scripts/setup.sh --test
	$(PY) -m pytest -q tests

# Under a minute: the tests that need no model, worker or fleet.
test-fast: setup
	$(PY) -m pytest -q -m unit tests

run-worker: setup
	$(VENV)/bin/gunicorn -c deploy/gunicorn.conf.py 'app:create_app()'

tiny-model: setup
	$(PY) scripts/make_tiny_model.py models/tiny-sensevoice

serve: setup
	$(FLEET) serve

stop:
	$(FLEET) stop

restart: setup
	$(FLEET) restart

status:
	$(FLEET) status

reload: setup
	$(FLEET) reload

# Restart every active instance, one at a time, without dropping a request.
rolling-restart: setup
	$(FLEET) rolling-restart

scale: setup
	@test -n "$(N)" || { echo "usage: make scale N=<instances>" >&2; exit 2; }
	$(FLEET) scale $(N)

monitor:
	scripts/monitor.sh $(ARGS)

logs:
	$(FLEET) logs

verify: setup
	$(FLEET) verify

install-system: setup
	$(FLEET) install-system

loadtest: setup
	$(PY) scripts/loadtest.py $(ARGS)

bench: setup
	$(PY) scripts/bench.py $(ARGS)

# The GPU subset on a machine with GPUs, in under 8 minutes; refuses without one.
bench-gpu: setup
	scripts/bench_gpu.sh $(ARGS)

soak: setup
	$(PY) -m pytest -q -m soak tests

fuzz: setup
	$(PY) -m pytest -q -m fuzz_long tests

# The 1-hour recording fanned out over a real fleet (~3 min on 2 cores).
long: setup
	$(PY) -m pytest -q -m long_recording tests

lint:
	shellcheck scripts/*.sh .ci/run
