"""uninstall-python.py DESTDIR PREFIX: removes the turnstiled package that
`pip install --root DESTDIR --prefix PREFIX` installed, file by file from
its RECORD (pip cannot uninstall from a DESTDIR tree)."""

import glob
import os
import sys


def main() -> int:
    destdir, prefix = sys.argv[1], sys.argv[2]
    root = os.path.join(destdir or "/", prefix.lstrip("/"))
    records = glob.glob(os.path.join(root, "lib", "python3*", "*-packages",
                                     "turnstiled-*.dist-info", "RECORD"))
    for record in records:
        site = os.path.dirname(os.path.dirname(record))
        dirs = set()
        with open(record) as f:
            for line in f:
                path = os.path.normpath(os.path.join(site, line.rsplit(",", 2)[0]))
                if os.path.isfile(path) or os.path.islink(path):
                    os.unlink(path)
                dirs.add(os.path.dirname(path))
        # Byte code pip did not list, then every directory left empty.
        for d in sorted(dirs, key=len, reverse=True):
            cache = os.path.join(d, "__pycache__")
            for pyc in glob.glob(os.path.join(cache, "*.pyc")):
                os.unlink(pyc)
            for empty in (cache, d):
                try:
                    os.rmdir(empty)
                except OSError:
                    pass
    if not records:
        print(f"uninstall: no turnstiled package under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
