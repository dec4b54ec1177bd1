"""Owner-only storage: the data directory and the SQLite files hold password hashes,
client addresses and user agents, so nobody but the server's user may read them."""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: Path) -> None:
    """Create `path` and any missing parents as 0700, whatever the umask; an existing
    directory is left as the operator made it."""
    missing: list[Path] = []
    current = path.absolute()
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # another worker made it first
        # mkdir's mode is masked by the umask, which may also take bits the owner needs.
        os.chmod(directory, DIR_MODE)


def make_private_file(path: Path) -> None:
    """Create an empty `path` as 0600 unless it exists. SQLite gives its -wal and -shm
    files the database file's mode, so they are owner-only too."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def prepare_sqlite(url: str) -> None:
    """Make the directory and the database file of a SQLite URL, both owner-only."""
    path = url.split(":///", 1)[1]
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        return
    make_private_dir(Path(path).parent)
    make_private_file(Path(path))
