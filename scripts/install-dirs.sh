#!/bin/sh
# install-dirs.sh record DESTDIR MANIFEST DIR...
# install-dirs.sh remove DESTDIR MANIFEST
#
# `make install` may create directories (DESTDIR/usr/bin in an empty
# staging tree, /etc/sv on a system without runit); `make uninstall` must
# remove those and no others, empty or not. record, run before anything is
# installed, appends to DESTDIR/MANIFEST each DIR and each of its parents
# that does not exist yet (DIRs and MANIFEST are paths on the installed
# system, without DESTDIR), keeping what an earlier install recorded.
# remove deletes MANIFEST, then each directory it names that is empty,
# deepest first.
set -eu
mode=$1 destdir=$2 manifest=$2$3
shift 3
case $mode in
record)
    new=$(mktemp)
    trap 'rm -f "$new"' EXIT
    for dir; do
        while [ "$dir" != / ] && [ -n "$dir" ] && [ ! -d "$destdir$dir" ]; do
            echo "$dir"
            dir=$(dirname "$dir")
        done
    done > "$new"
    install -d "$(dirname "$manifest")"
    if [ -f "$manifest" ]; then
        cat "$manifest" >> "$new"
    fi
    sort -u "$new" > "$manifest"
    chmod 644 "$manifest"
    ;;
remove)
    [ -f "$manifest" ] || exit 0
    list=$(sort -r "$manifest")
    rm -f "$manifest"
    # Reverse order puts a directory after everything below it.
    echo "$list" | while IFS= read -r dir; do
        [ -z "$dir" ] || rmdir "$destdir$dir" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: install-dirs.sh record|remove DESTDIR MANIFEST [DIR...]" >&2
    exit 2
    ;;
esac
