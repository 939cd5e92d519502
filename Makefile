# `make` builds the PAM module, the manager holder and the fd store; `make
# demo` and `make test` first install what they need (Debian packages and a
# virtualenv), so both work on a fresh Debian machine as root.

VENV    ?= /opt/turnstiled-venv
PYTHON  := $(VENV)/bin/python
CC      ?= gcc
CFLAGS  ?= -O2 -g
PAM_CFLAGS := -std=c11 -fPIC -Wall -Wextra -Werror -D_GNU_SOURCE
HOLDER_CFLAGS := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE

all: pam/pam_turnstile.so holder/turnstiled-holder holder/turnstiled-fdstore

pam/pam_turnstile.so: pam/pam_turnstile.c
	$(CC) $(CFLAGS) $(PAM_CFLAGS) -shared -o $@ $< -lpam

holder/turnstiled-holder: holder/turnstiled-holder.c
	$(CC) $(CFLAGS) $(HOLDER_CFLAGS) -o $@ $< -lpam

holder/turnstiled-fdstore: holder/turnstiled-fdstore.c
	$(CC) $(CFLAGS) $(HOLDER_CFLAGS) -o $@ $<

setup:
	VENV=$(VENV) sh scripts/setup.sh

demo: setup all
	$(PYTHON) scripts/demo.py

test: setup all
	$(VENV)/bin/ruff check turnstiled tests bench scripts
	$(PYTHON) -m pytest -q

bench: setup all
	$(PYTHON) bench/login.py
	$(PYTHON) bench/scale.py
	$(PYTHON) bench/burst.py
	$(PYTHON) bench/restart.py

clean:
	rm -f pam/pam_turnstile.so holder/turnstiled-holder holder/turnstiled-fdstore

.PHONY: all setup demo test bench clean
