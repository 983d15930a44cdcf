# The one place the set-up steps live. `make run` and `make test` are the two commands.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# Debian's interpreter, not one under a 0700 home (pyenv's in /root): notebook servers, Spark
# servers and sandboxed product code run as other accounts and must be able to execute it
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo python3.11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHP := node_modules/.bin/configurable-http-proxy
KERNELS := $(wildcard kernels/*/kernel.json)
# pip lists index locations it cannot read as warnings; they are noise here
PIP_QUIET := sed "/^WARNING: Location/d"

.PHONY: install reachable sandbox browser run test lint bench clean card-pictures

install: reachable $(STAMP) $(CHP) sandbox

# users' servers, Spark servers and sandboxed code run as other accounts and execute .venv:
# every directory above the checkout needs the other-execute bit (pass through, not list). A
# clone under a 0700 home (/root) gets o+x on the way there, as root; otherwise a clear error.
reachable:
	@python3 -c 'import os, stat, sys; from pathlib import Path; \
	here = Path(sys.argv[1]).resolve(); \
	blocked = [d for d in [*reversed(here.parents), here] if not d.stat().st_mode & stat.S_IXOTH]; \
	[print(f"{d}: adding o+x so the platform accounts can reach {here}") or \
	 os.chmod(d, d.stat().st_mode | stat.S_IXOTH) for d in blocked if os.geteuid() == 0]; \
	sys.exit(f"{blocked[0]} is not passable by other accounts: chmod o+x it, or clone elsewhere" \
	         if blocked and os.geteuid() != 0 else 0)' "$(CURDIR)"

# product code runs in a bubblewrap sandbox (docs/sandbox.md); Debian's package, installed as root
sandbox:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing bubblewrap (the sandbox for product code) ..."; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null \
	      || { apt-get update -q >/dev/null && \
	           DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null; }; \
	  else \
	    echo "bubblewrap (bwrap) is missing: install it as root (apt-get install bubblewrap)," \
	         "product code cannot run without it" >&2; exit 1; \
	  fi; }
	@command -v bwrap >/dev/null

$(STAMP): pyproject.toml $(KERNELS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing Python packages into $(VENV) (first time: several minutes) ..."
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | $(PIP_QUIET)
	@for k in $(dir $(KERNELS)); do \
	  $(BIN)/jupyter kernelspec install --sys-prefix --replace $$k >/dev/null 2>&1; done
	@touch $@

$(CHP): package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

# the browser tests drive Debian's chromium through Playwright; never a downloaded browser
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing chromium (for the browser tests) ..."; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
	      || { apt-get update -q >/dev/null && \
	           DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	  else \
	    echo "chromium is missing: install it as root (apt-get install chromium)" >&2; exit 1; \
	  fi; }
	@test -x /usr/bin/chromium

run: install
	$(BIN)/market run

test: install browser
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

# the output pictures on the catalogue cards of the products without ground truth (issue 17):
# each product's notebook run on the demo tables, its PNG written to the bundle's card/
card-pictures: install
	nice -n 10 $(BIN)/python -m marketplace_ext.catalogue_pictures

clean:
	rm -rf var .pytest_cache
