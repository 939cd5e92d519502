# `make` builds the PAM module, the manager holder and the fd store; `make
# demo` and `make test` first install what they need (Debian packages and a
# virtualenv), so both work on a fresh Debian machine as root.
#
# `make install` installs like a distribution package: DESTDIR, PREFIX
# (/usr/local; packagers pass /usr), SYSCONFDIR, LIBEXECDIR, MANDIR, PAMDIR
# (found: where this system's libpam loads modules from) and PYTHON (the
# interpreter whose site-packages receive the package; it needs pip,
# setuptools and, before setuptools 70.1, wheel). Config and PAM files
# never replace a changed copy: the new one goes beside it as FILE.new.
# The directories install makes are listed in LIBEXECDIR/installed-dirs,
# for uninstall to remove those and no others.

PREFIX     ?= /usr/local
# Where pip writes the commands, so not a choice: the service files name it.
override BINDIR := $(PREFIX)/bin
SYSCONFDIR ?= /etc
LIBEXECDIR ?= $(PREFIX)/libexec/turnstiled
MANDIR     ?= $(PREFIX)/share/man
# The bus policy of org.freedesktop.login1. The system bus reads
# /usr/share/dbus-1/system.d and /etc/dbus-1/system.d only: a package
# (PREFIX=/usr) goes to the first, a local install to the second.
DBUSDIR    ?= $(if $(filter /usr,$(PREFIX)),/usr/share,$(SYSCONFDIR))/dbus-1/system.d
PAMDIR     ?= $(shell sh scripts/pamdir.sh $(CC))
PYTHON     ?= python3
SCDOC      ?= scdoc

VENV    ?= /opt/turnstiled-venv
VPYTHON := $(VENV)/bin/python
CC      ?= gcc
CFLAGS  ?= -O2 -g
PAM_CFLAGS := -std=c11 -fPIC -Wall -Wextra -Werror -D_GNU_SOURCE
HOLDER_CFLAGS := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE

all: pam/pam_turnstile.so holder/turnstiled-holder holder/turnstiled-fdstore

pam/pam_turnstile.so: pam/pam_turnstile.c
	$(CC) $(CFLAGS) $(PAM_CFLAGS) -shared -o $@ $< -lpam

# Bound at load: a spawned child shares the holder's memory until its exec,
# and should not run the dynamic linker's lazy binding on it.
holder/turnstiled-holder: holder/turnstiled-holder.c holder/close-fds.h
	$(CC) $(CFLAGS) $(HOLDER_CFLAGS) -Wl,-z,relro,-z,now -o $@ $< -lpam

holder/turnstiled-fdstore: holder/turnstiled-fdstore.c holder/close-fds.h
	$(CC) $(CFLAGS) $(HOLDER_CFLAGS) -o $@ $<

setup:
	VENV=$(VENV) sh scripts/setup.sh

demo: setup all
	$(VPYTHON) scripts/demo.py

test: setup all
	$(VENV)/bin/ruff check turnstiled tests bench scripts
	$(VPYTHON) -m pytest -q

bench: setup all
	$(VPYTHON) bench/login.py
	$(VPYTHON) bench/spare.py
	$(VPYTHON) bench/scale.py
	$(VPYTHON) bench/burst.py
	$(VPYTHON) bench/restart.py

MANPAGES := man/turnstiled.8 man/turnstiled.conf.5 man/turnstilectl.1 man/pam_turnstile.8 \
	man/turnstile-update-runit-env.1

man: $(MANPAGES)

man/%: man/%.scd
	$(SCDOC) < $< | awk -f scripts/man-tidy.awk > $@

# The installed config points at where the programs went.
SUBST = sed -e 's|/usr/libexec/turnstiled|$(LIBEXECDIR)|g' -e 's|@BINDIR@|$(BINDIR)|g' \
	-e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

# Every directory install writes to, but the Python package's (python-package.py dirs).
INSTALL_DIRS = $(LIBEXECDIR) $(PAMDIR) $(DBUSDIR) $(MANDIR)/man1 $(MANDIR)/man5 $(MANDIR)/man8 \
	$(SYSCONFDIR)/turnstile/backend $(SYSCONFDIR)/pam.d $(SYSCONFDIR)/dinit.d \
	$(SYSCONFDIR)/sv/turnstiled/log
CONFIG_FILES = data/turnstiled.conf $(SYSCONFDIR)/turnstile/turnstiled.conf \
	backends/runit.conf $(SYSCONFDIR)/turnstile/backend/runit.conf \
	backends/dinit.conf $(SYSCONFDIR)/turnstile/backend/dinit.conf \
	data/pam.d/turnstiled $(SYSCONFDIR)/pam.d/turnstiled \
	data/dinit.d/turnstiled $(SYSCONFDIR)/dinit.d/turnstiled
SERVICE_FILES = data/sv/turnstiled/run $(SYSCONFDIR)/sv/turnstiled/run \
	data/sv/turnstiled/log/run $(SYSCONFDIR)/sv/turnstiled/log/run
MANIFEST = $(LIBEXECDIR)/installed-dirs

install: all man
	@$(PYTHON) scripts/python-package.py check
	pydirs=$$($(PYTHON) scripts/python-package.py dirs "$(PREFIX)") && \
		sh scripts/install-dirs.sh record "$(DESTDIR)" "$(MANIFEST)" $(INSTALL_DIRS) $$pydirs
	$(PYTHON) scripts/python-package.py install "$(DESTDIR)" "$(PREFIX)"
	@[ -x "$(DESTDIR)$(BINDIR)/turnstiled" ] || { echo "make install: pip did not write" \
		"$(DESTDIR)$(BINDIR)/turnstiled, which the service files start; see" \
		"'$(PYTHON) scripts/python-package.py dirs $(PREFIX)'" >&2; exit 1; }
	install -d "$(DESTDIR)$(LIBEXECDIR)" "$(DESTDIR)$(PAMDIR)"
	install -m 755 backends/runit backends/dinit holder/turnstiled-holder \
		holder/turnstiled-fdstore "$(DESTDIR)$(LIBEXECDIR)/"
	install -m 644 pam/pam_turnstile.so "$(DESTDIR)$(PAMDIR)/"
	for page in $(MANPAGES); do \
		sect=$${page##*.}; install -d "$(DESTDIR)$(MANDIR)/man$$sect"; \
		install -m 644 $$page "$(DESTDIR)$(MANDIR)/man$$sect/"; done
	install -d "$(DESTDIR)$(DBUSDIR)"
	install -m 644 data/dbus-1/system.d/org.freedesktop.login1.conf "$(DESTDIR)$(DBUSDIR)/"
	sh scripts/install-config.sh "$(DESTDIR)" 644 "$(SUBST)" $(CONFIG_FILES)
	sh scripts/install-config.sh "$(DESTDIR)" 755 "$(SUBST)" $(SERVICE_FILES)

uninstall:
	$(PYTHON) scripts/python-package.py uninstall "$(DESTDIR)" "$(PREFIX)"
	rm -f "$(DESTDIR)$(LIBEXECDIR)/runit" "$(DESTDIR)$(LIBEXECDIR)/dinit" \
		"$(DESTDIR)$(LIBEXECDIR)/turnstiled-holder" "$(DESTDIR)$(LIBEXECDIR)/turnstiled-fdstore" \
		"$(DESTDIR)$(PAMDIR)/pam_turnstile.so" "$(DESTDIR)$(DBUSDIR)/org.freedesktop.login1.conf"
	for page in $(MANPAGES); do rm -f "$(DESTDIR)$(MANDIR)/man$${page##*.}/$${page#man/}"; done
	sh scripts/install-config.sh --remove "$(DESTDIR)" "$(SUBST)" $(CONFIG_FILES) $(SERVICE_FILES)
	# The directories install made, once empty; none that were there before.
	sh scripts/install-dirs.sh remove "$(DESTDIR)" "$(MANIFEST)"

clean:
	rm -f pam/pam_turnstile.so holder/turnstiled-holder holder/turnstiled-fdstore $(MANPAGES)

.PHONY: all setup demo test bench man install uninstall clean
