# otfgp entry points for a fresh Debian/Ubuntu machine.
#
#   make demo    set everything up, then learn melting Al on the fly with DFT (examples/otf_al.py)
#   make test    set everything up, then run the test suite
#   make bench   set everything up, then time training and prediction (bench/gp_speed.py)
#   make setup   system packages (only what is missing), .venv, and otfgp installed into it
#
# Variables: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# SKIP_APT=1 (never call apt-get), BENCH_ARGS (extra arguments for bench/gp_speed.py).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BENCH_ARGS ?=
APT_PACKAGES := quantum-espresso quantum-espresso-data libopenblas-dev
# a second DFT code for the tests (tests/test_cp2k_labeller.py); skipped when on PATH
CP2K_PACKAGES := cp2k

# apt-get through sudo only when not root; sudo drops the environment, hence `env`.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: help setup system-packages venv test demo bench

help:
	@echo "make demo   - set up and run examples/otf_al.py (on-the-fly Al with Quantum ESPRESSO)"
	echo "make test   - set up and run the tests"
	echo "make bench  - set up and run bench/gp_speed.py (BENCH_ARGS='--quick' for a short run)"
	echo "make setup  - system packages, $(VENV), pip install .[test] (with CHGNet, otfgp[umlip]: ~4 min, 6 GB)"

# Quantum ESPRESSO (pw.x) and OpenBLAS for DFT labels, CP2K for the tests of a second DFT
# code, plus a C++ compiler and the Python headers for building the extension. Nothing is
# installed when everything is present; the Quantum ESPRESSO packages are skipped outright
# when pw.x is already on PATH, CP2K when cp2k_shell is.
system-packages:
	@want=()
	if [ -n "$${SKIP_APT:-}" ]; then
	  echo "setup: SKIP_APT set, not installing system packages"; exit 0
	fi
	if command -v pw.x >/dev/null 2>&1; then
	  echo "setup: pw.x found at $$(command -v pw.x), skipping Quantum ESPRESSO packages"
	else
	  for p in $(APT_PACKAGES); do
	    dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' || want+=("$$p")
	  done
	fi
	if ! command -v cp2k_shell >/dev/null 2>&1; then
	  for p in $(CP2K_PACKAGES); do
	    dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' || want+=("$$p")
	  done
	fi
	command -v c++ >/dev/null 2>&1 || want+=(g++)
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || want+=(python3-dev)
	if [ $${#want[@]} -eq 0 ]; then
	  echo "setup: system packages present"; exit 0
	fi
	command -v apt-get >/dev/null 2>&1 || { echo "setup: apt-get not found; install $${want[*]} by hand" >&2; exit 1; }
	echo "setup: installing $${want[*]}"
	$(APT_GET) update
	$(APT_GET) install -y "$${want[@]}"

# Debian's python3 cannot create venvs without python3-venv: install it on first failure.
venv: system-packages
	@if [ -x "$(VENV)/bin/python" ]; then exit 0; fi
	echo "setup: creating $(VENV)"
	if ! $(PYTHON) -m venv "$(VENV)"; then
	  rm -rf "$(VENV)"
	  [ -z "$${SKIP_APT:-}" ] || { echo "setup: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
	  $(APT_GET) update
	  $(APT_GET) install -y python3-venv
	  $(PYTHON) -m venv "$(VENV)"
	fi

setup: venv
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install ".[test]"

test: setup
	$(VENV)/bin/python -m pytest -q tests

demo: setup
	$(VENV)/bin/python examples/otf_al.py --overwrite

bench: setup
	$(VENV)/bin/python bench/gp_speed.py $(BENCH_ARGS)
