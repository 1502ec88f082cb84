"""Which ASE-readable kind a file is (from its name and first bytes); whether an OUTCAR converged.

Recognised files (by name and first bytes; a ``.gz`` copy of a text file works too):

==================  ===================================================  ============================
kind                file                                                 frames
==================  ===================================================  ============================
``extxyz``          ``*.extxyz``/``*.xyz`` (natoms line first), or any   one per structure
                    name whose 2nd line has ``Lattice=``/``Properties=``
``db``              ASE database: SQLite ``*.db`` or ASE-JSON ``*.json``  one per row
``traj``            ASE trajectory ``*.traj`` (ULM format, no pickle)     the steps of one trajectory
``vasp-out``        ``OUTCAR*``                                           every ionic step
``vasp-xml``        ``vasprun*.xml``                                      every ionic step
==================  ===================================================  ============================

A file that none of these matches but that is passed explicitly with ``--format ase`` is left to
ASE's own format detection (kind ``other``).

The OUTCAR check: VASP prints ``reached required accuracy - stopping structural energy
minimisation`` when an ionic relaxation meets its EDIFFG criterion; the reader
(:mod:`matforge.datasets.readers.ase_formats`) flags the last ionic step of such a file relaxed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from matforge.datasets.readers.base import read_head
from matforge.datasets.readers.json_stream import head_events, is_gzip

COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")
SQLITE_MAGIC = b"SQLite format 3\x00"
ULM_MAGIC = b"- of Ulm"
OUTCAR_CONVERGED = b"reached required accuracy"
ASE_JSON_ROW_KEYS = frozenset({"numbers", "positions", "cell", "pbc", "ctime", "mtime", "user", "unique_id",
                               "calculator", "calculator_parameters", "energy", "forces", "stress"})

def _base_name(path: Path) -> str:
    """Lower-case file name without a compression suffix."""
    name = path.name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _looks_like_extxyz(head: bytes, require_comment_keys: bool) -> bool:
    lines = head.split(b"\n", 2)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        return False
    return not require_comment_keys or b"Lattice=" in lines[1] or b"Properties=" in lines[1]


def _is_ase_json_db(path: Path) -> bool:
    events = head_events(path, nbytes=8192, max_events=8)
    if len(events) < 3 or events[0][0] != "start_map" or events[1][0] != "map_key":
        return False
    first = str(events[1][1])
    if first in ("ids", "nextid"):
        return True
    return first.isdigit() and events[2][0] == "start_map" and len(events) > 3 and events[3][1] in ASE_JSON_ROW_KEYS


def file_kind(path: Path) -> str | None:
    """Which ASE-readable kind ``path`` is (see the module table), or None."""
    if not path.is_file():
        return None
    base = _base_name(path)
    head = read_head(path, 4096)
    if base.endswith(".db"):
        return "db" if head.startswith(SQLITE_MAGIC) else None
    if base.endswith(".json"):
        return "db" if _is_ase_json_db(path) else None
    if base.endswith(".traj"):
        return "traj" if head.startswith(ULM_MAGIC) else None
    if "outcar" in base and b"vasp." in head[:1024]:
        return "vasp-out"
    if "vasprun" in base and base.endswith(".xml") and b"<modeling" in head:
        return "vasp-xml"
    if base.endswith((".xyz", ".extxyz")) and _looks_like_extxyz(head, require_comment_keys=False):
        return "extxyz"
    if _looks_like_extxyz(head, require_comment_keys=True):
        return "extxyz"
    return None


def outcar_converged(path: Path) -> bool:
    """True if the OUTCAR says its ionic relaxation ``reached required accuracy`` (streamed scan)."""
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as f:
        tail = b""
        while True:
            block = f.read(1 << 20)
            if not block:
                return False
            if OUTCAR_CONVERGED in tail + block:
                return True
            tail = block[-len(OUTCAR_CONVERGED):]
