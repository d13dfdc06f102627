"""Run a launcher with a Python audit hook that records every path the process writes, creates or renames.

    TRAITLAB_AUDIT_OUT=/tmp/w.json python audit_launch.py launchers/extract.py key=value ...
Audit events see writes from every Python-level API (open, os.open, rename/replace, mkdir, remove, sqlite3
connections), whoever calls them, so the test need not trust any snapshot of a tree other people edit too.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_written: set[str] = set()
_on = [True]


def _hook(event: str, args: tuple) -> None:
    if not _on[0]:
        return
    path, dir_fd = None, None
    if event == "open":
        p, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        path = p if writes else None
    elif event in ("os.rename", "os.link"):
        path, dir_fd = args[1], args[3]
    elif event == "os.symlink":
        path, dir_fd = args[1], args[2]
    elif event in ("os.remove", "os.rmdir"):
        path, dir_fd = args[0], args[1]
    elif event == "os.mkdir":
        path, dir_fd = args[0], args[2]
    elif event in ("os.truncate", "os.chmod", "os.utime", "shutil.rmtree"):
        path = args[0]
    elif event == "shutil.copyfile":
        path = args[1]
    elif event == "sqlite3.connect":
        path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):  # rmtree & co work relative to a dir fd
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        _written.add(os.path.abspath(path))


def _dump() -> None:
    _on[0] = False
    with open(os.environ["TRAITLAB_AUDIT_OUT"], "w") as fh:
        json.dump(sorted(_written), fh)


def main() -> None:
    import atexit

    atexit.register(_dump)
    sys.addaudithook(_hook)
    launcher = sys.argv[1]
    sys.argv = [launcher, *sys.argv[2:]]
    try:
        runpy.run_path(launcher, run_name="__main__")
    finally:
        _dump()


if __name__ == "__main__":
    main()
