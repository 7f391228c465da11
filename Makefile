# seam-qc — `make demo` runs the main job on embedded defaults, `make test` runs the suite.
# Both bootstrap .venv (and apt packages when missing) on a fresh Debian / Raspberry Pi OS machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= edge,workstation,test
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
QUICK ?=
PYTEST_ARGS ?=
comma := ,

.PHONY: setup apt demo test test-fast bench install clean shipped-model

# apt packages the suite and demo rely on; installed only when missing.
apt:
	@missing=""; \
	command -v mosquitto >/dev/null || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null || missing="$$missing mosquitto-clients"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# The venv's requirements come from setup.cfg (install_requires + the extras in EXTRAS).
$(VENV)/.stamp-$(subst $(comma),-,$(EXTRAS)): setup.cfg | apt
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c 'import configparser, sys; c = configparser.ConfigParser(); c.read("setup.cfg"); \
	  lines = c["options"]["install_requires"].splitlines(); \
	  [lines.extend(c["options.extras_require"][x].splitlines()) for x in sys.argv[1].split(",")]; \
	  print("\n".join(l.strip() for l in lines if l.strip()))' $(EXTRAS) > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	@touch $@

setup: $(VENV)/.stamp-$(subst $(comma),-,$(EXTRAS))

demo: setup
	$(PY) -m convert demo --config config/demo.yaml

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m convert bench $(if $(QUICK),--quick) --json bench-results.json

# Retrain the shipped default bundle (see README, "The shipped model").
shipped-model: setup
	$(PY) -m convert ship --out edge/models/default

clean:
	rm -rf $(VENV) demo-out bench-results.json .pytest_cache
