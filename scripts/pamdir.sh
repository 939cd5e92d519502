#!/bin/sh
# pamdir.sh [CC]: prints the directory this system's libpam loads modules
# from: security/ beside the libpam the compiler links against (Debian:
# /usr/lib/x86_64-linux-gnu/security, Void: /usr/lib/security).
lib=$("${1:-cc}" -print-file-name=libpam.so 2> /dev/null)
case "$lib" in
    /*) dir=$(dirname "$(readlink -f "$lib")") ;;
    *) dir="" ;;
esac
if [ -n "$dir" ] && [ -d "$dir/security" ]; then
    echo "$dir/security"
else
    echo /usr/lib/security
fi
