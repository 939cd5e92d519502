#!/bin/sh
# Installs what turnstiled's build, demo and tests need on Debian, as root
# (systemd only for its loginctl, which the login1 tests run against the
# daemon; libudev1 for pyudev):
# the system packages and a virtualenv that every user can reach (the test
# users run parts of it, and root's home is closed to them).
set -eu

VENV=${VENV:-/opt/turnstiled-venv}
PACKAGES="gcc make libc6-dev libpam0g-dev runit pamtester libpam-wrapper python3 python3-venv
          dbus-daemon systemd libudev1 valgrind scdoc mandoc man-db groff-base"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
# A real (non-editable) install: the copy under $VENV is what other users run.
"$VENV/bin/pip" install -q --disable-pip-version-check ".[test]"
chmod -R a+rX "$VENV"
