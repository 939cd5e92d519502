#!/bin/sh
# install-config.sh DESTDIR MODE SUBST SRC DEST [SRC DEST]...
# install-config.sh --remove DESTDIR SUBST SRC DEST [SRC DEST]...
#
# Installs files an administrator may edit (config, PAM, service files):
# SRC, passed through the sed command SUBST, becomes DESTDIR/DEST unless a
# changed DEST is there, which is kept; the new one then goes beside it as
# DEST.new. --remove removes DEST only if it is unchanged, and the DEST.new
# an install left beside a changed one.
set -eu
remove=false
if [ "$1" = --remove ]; then
    remove=true
    shift
fi
destdir=$1
shift
if ! $remove; then
    mode=$1
    shift
fi
subst=$1
shift
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
while [ $# -ge 2 ]; do
    src=$1 dest=$destdir$2
    shift 2
    eval "$subst" < "$src" > "$tmp"
    if $remove; then
        if [ -f "$dest.new" ] && cmp -s "$tmp" "$dest.new"; then
            rm -f "$dest.new"
        fi
        if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
            rm -f "$dest"
        elif [ -f "$dest" ]; then
            echo "kept $dest: it was changed"
        fi
        continue
    fi
    install -d "$(dirname "$dest")"
    if [ ! -e "$dest" ] || cmp -s "$tmp" "$dest"; then
        install -m "$mode" "$tmp" "$dest"
    else
        install -m "$mode" "$tmp" "$dest.new"
        echo "kept the changed $dest; the new one is $dest.new"
    fi
done
