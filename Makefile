# seam-qc — `make demo` runs the main job on embedded defaults, `make test` runs the suite.
# Both bootstrap .venv (and apt packages when missing) on a fresh Debian / Raspberry Pi OS machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= edge,workstation,test
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
QUICK ?=
DASHBOARD ?=
PYTEST_ARGS ?=
# pytest workers for `make test` (pytest-xdist, one test file per worker at a time): the suite waits on
# daemons, brokers and real-time video about half of its wall time, so two workers on two cores
# finish in about half the time. Files go out in the order tests/conftest.py sorts them (longest
# first; xdist would otherwise send the files with the most tests first). TEST_JOBS=0: one process.
TEST_JOBS ?= 2
comma := ,
# install_requires + the extras named in EXTRAS, one requirement a line, read from setup.cfg
REQS_PY := 'import configparser, sys; c = configparser.ConfigParser(); c.read("setup.cfg"); \
  lines = c["options"]["install_requires"].splitlines(); \
  [lines.extend(c["options.extras_require"][x].splitlines()) for x in sys.argv[1].split(",") if x]; \
  print("\n".join(l.strip() for l in lines if l.strip()))'

.PHONY: setup arch apt lint demo test test-fast bench install print-requirements clean shipped-model leave-out held-back proxy

# ai-edge-litert 2.x ships 64-bit wheels only (aarch64 manylinux_2_27, x86-64): a 32-bit ARM OS
# cannot run the classifier, so setup (demo, test) and install stop here with one line.
arch:
	@m="$$(uname -m)"; case "$$m" in arm64) ;; arm*) \
	  echo "error: this is a 32-bit ARM system ($$m): seam-qc needs a 64-bit OS (64-bit Raspberry Pi OS; ai-edge-litert has no 32-bit ARM wheels)" >&2; exit 1;; \
	esac

# apt packages the demo (and, with the test extra, the suite) relies on; installed only when missing.
apt: arch
	@missing=""; \
	command -v mosquitto >/dev/null || missing="$$missing mosquitto"; \
	command -v mosquitto_sub >/dev/null || missing="$$missing mosquitto-clients"; \
	if [[ ",$(EXTRAS)," == *,test,* ]]; then \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  command -v openssl >/dev/null || missing="$$missing openssl"; \
	fi; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# The venv's requirements come from setup.cfg (install_requires + the extras in EXTRAS).
$(VENV)/.stamp-$(subst $(comma),-,$(EXTRAS)): setup.cfg | arch apt
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PYTHON) -c $(REQS_PY) $(EXTRAS) > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	@touch $@

setup: arch $(VENV)/.stamp-$(subst $(comma),-,$(EXTRAS))

# the demo needs only the edge extra (no TensorFlow); test/bench need everything.
# DASHBOARD=1: the demo also serves `convert dashboard` on its broker and keeps both up until Ctrl-C
demo:
	@$(MAKE) --no-print-directory setup EXTRAS=edge$(if $(DASHBOARD),$(comma)dashboard)
	$(PY) -m convert demo --config config/demo.yaml $(if $(DASHBOARD),--dashboard)

# lint + format check + types; `make test` runs it first, so CI does too
lint: setup
	$(PY) -m ruff check edge convert tests
	$(PY) -m ruff format --check edge convert tests
	$(PY) -m mypy edge convert tests

test: setup lint
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m convert bench $(if $(QUICK),--quick) --json bench-results.json

# Retrain the shipped default bundle (see README, "The shipped model").
shipped-model: setup
	$(PY) -m convert ship --out edge/models/default

# The generalisation benchmark (README, "Real fabric"): train without each fabric family, test on it.
leave-out: setup
	$(PY) -m convert leave-out --work build/leave-out --train-count 1400 --valid-count 350 --test-count 700 --epochs 4 \
	  --finetune-families felt --finetune-counts 50,200 --json build/leave-out.json

# The shipped bundle on the fabric families it never saw (README, "Fabrics the shipped model never saw").
held-back: setup
	$(PY) -m convert leave-out --held-back --work build/held-back --valid-count 1000 --test-count 2000 \
	  --json build/held-back.json

# The real-photo proxies (README, "The proxy sets"): a bundle's defect-vs-normal and broken-vs-normal
# AUROC and accuracy per look on synthetic sets it never trained on, each drawn once into build/proxy.
# BUNDLE=DIR scores another bundle.
BUNDLE ?= edge/models/default
PROXY_SETS := heldwide tone px4 held204 seed3
PROXY_heldwide := --count 1200 --seed 205 --families corduroy,herringbone,melange --scale-range 2.3:9
PROXY_tone := --count 1200 --seed 208 --families corduroy,herringbone,melange --scale-range 2.3:5 --tone-share 0.9
PROXY_px4 := --count 1000 --seed 41 --px-per-mm 4
PROXY_held204 := --count 1200 --seed 204 --families corduroy,herringbone,melange
PROXY_seed3 := --count 2000 --seed 3
define proxy_set
	@echo "== $(1): synth $(PROXY_$(1))"
	@[ -f build/proxy/$(1)/data.csv ] || $(PY) -m convert synth --out build/proxy/$(1) $(PROXY_$(1)) >/dev/null
	$(PY) -m convert evaluate --model $(BUNDLE) --data build/proxy/$(1)/data.csv --by-look

endef
proxy: setup
	$(foreach s,$(PROXY_SETS),$(call proxy_set,$(s)))

print-requirements:
	@$(PYTHON) -c $(REQS_PY) $(EXTRAS)

# On the Pi, as root, from /opt/seam-qc (see README, "Installing on a Raspberry Pi").
install: arch
	id seam-qc >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/seam-qc \
	  --shell /usr/sbin/nologin --groups video seam-qc
	install -D -m 0644 systemd/seam-qc.service /etc/systemd/system/seam-qc.service
	[ -f /etc/seam-qc/seam-qc.yaml ] || install -D -m 0644 config/seam-qc.yaml /etc/seam-qc/seam-qc.yaml
	[ -f /etc/seam-qc/mqtt-password ] || install -D -m 0600 /dev/null /etc/seam-qc/mqtt-password
	systemctl daemon-reload
	systemctl enable --now seam-qc

clean:
	rm -rf $(VENV) demo-out bench-results.json .pytest_cache
