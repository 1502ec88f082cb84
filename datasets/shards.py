"""LMDB shard files: writing them safely and opening them once per process.

A shard is a single-file LMDB (``subdir=False``) named ``data.NNNN.lmdb``. Keys are fixed-width:
the record's index inside the shard as 8 big-endian bytes, so keys sort in record order. One extra
key, ``__matforge__``, holds a JSON header (format, schema version, dataset id, shard index, record
and atom counts) that tells a matforge shard from a foreign LMDB file.

Writing goes to ``<name>.partial`` with large transactions (one commit every ``commit_every``
records, never one per record) and is renamed to its final name only after the header is written
and the environment closed, so an interrupted conversion never leaves a shard that looks complete.

Reading: py-lmdb refuses to open one path twice in a process, and an environment must not be used
across ``fork``. :func:`open_env` keeps one read-only environment per path per process, and an
at-fork hook closes the inherited handles in a child so the child can open its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

import lmdb

from matforge.datasets.errors import DatasetError
from matforge.datasets.manifest import FORMAT_NAME, SCHEMA_VERSION

HEADER_KEY = b"__matforge__"
MAP_SIZE = 1 << 40  # 1 TiB of address space; the file grows only as data is written
_KEY = struct.Struct(">Q")


def record_key(index: int) -> bytes:
    """Fixed-width key of the ``index``-th record of a shard."""
    return _KEY.pack(index)


def shard_name(index: int) -> str:
    return f"data.{index:04d}.lmdb"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Append encoded records to one shard; call :meth:`close` to finalise (or :meth:`abort`)."""

    def __init__(self, path: Path, dataset_id: str, shard_index: int, commit_every: int = 2000) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.dataset_id = dataset_id
        self.shard_index = shard_index
        self.commit_every = commit_every
        self.num_records = 0
        self.num_atoms = 0
        if self.partial.exists():
            self.partial.unlink()
        self._env = lmdb.open(
            str(self.partial), subdir=False, map_size=MAP_SIZE, lock=False,
            readahead=False, meminit=False, sync=False, metasync=False,
        )
        self._txn = self._env.begin(write=True)
        self._pending = 0

    def append(self, blob: bytes, natoms: int) -> None:
        self._txn.put(record_key(self.num_records), blob, append=True)
        self.num_records += 1
        self.num_atoms += int(natoms)
        self._pending += 1
        if self._pending >= self.commit_every:
            self._txn.commit()
            self._txn = self._env.begin(write=True)
            self._pending = 0

    def close(self) -> None:
        """Write the header, sync, close and rename into place."""
        header = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "dataset_id": self.dataset_id,
            "shard_index": self.shard_index,
            "num_records": self.num_records,
            "num_atoms": self.num_atoms,
        }
        self._txn.put(HEADER_KEY, json.dumps(header).encode())
        self._txn.commit()
        self._env.sync(True)
        self._env.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._txn.abort()
            self._env.close()
        finally:
            if self.partial.exists():
                self.partial.unlink()


# --- reading -------------------------------------------------------------------------------------

_ENVS: dict[str, lmdb.Environment] = {}
_FILE_IDS: dict[str, tuple[int, int]] = {}  # (st_dev, st_ino) of the file each environment maps
_LOCK = threading.Lock()


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _refuse_short_file(path: str, env: lmdb.Environment) -> None:
    """A file cut shorter than the pages its LMDB meta page claims would crash the process with
    SIGBUS on the first read past its end; refuse it while only the meta pages have been read."""
    needed = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    size = os.path.getsize(path)
    if size < needed:
        env.close()
        raise DatasetError(f"{path}: truncated shard ({size} bytes on disk, its LMDB pages need {needed})")


def _close_inherited() -> None:
    for env in _ENVS.values():
        try:
            env.close()
        except lmdb.Error:
            pass
    _ENVS.clear()
    _FILE_IDS.clear()


os.register_at_fork(after_in_child=_close_inherited)


def open_env(path: Path | str, revalidate: bool = False) -> lmdb.Environment:
    """Return this process's read-only environment for ``path``, opening it on first use.

    ``revalidate`` (used when a dataset is opened) reopens the environment if the file at ``path``
    was replaced since (e.g. ``convert --overwrite``), so the process does not read the old file.
    """
    key = os.path.abspath(path)
    env = _ENVS.get(key)
    if env is not None and not (revalidate and _file_id(key) != _FILE_IDS.get(key)):
        return env
    with _LOCK:
        env = _ENVS.get(key)
        if env is not None and revalidate and _file_id(key) != _FILE_IDS.get(key):
            _FILE_IDS.pop(key, None)
            _ENVS.pop(key).close()
            env = None
        if env is None:
            file_id = _file_id(key)
            try:
                env = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False, meminit=False, max_readers=2048)
            except lmdb.Error as exc:
                raise DatasetError(f"{key}: cannot open shard ({exc})") from None
            _refuse_short_file(key, env)
            _ENVS[key] = env
            if file_id is not None:
                _FILE_IDS[key] = file_id
    return env


def close_env(path: Path | str) -> None:
    """Close this process's environment for ``path`` if open (e.g. before replacing the file)."""
    _FILE_IDS.pop(os.path.abspath(path), None)
    env = _ENVS.pop(os.path.abspath(path), None)
    if env is not None:
        env.close()


def read_header(path: Path | str) -> dict:
    """Read and check a shard's header; raise :class:`DatasetError` for a foreign file."""
    env = open_env(path, revalidate=True)
    try:
        with env.begin(buffers=False) as txn:
            raw = txn.get(HEADER_KEY)
    except lmdb.Error as exc:
        raise DatasetError(f"{path}: unreadable shard ({exc})") from None
    if raw is None:
        raise DatasetError(f"{path}: LMDB file without a matforge header; not a matforge shard")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError:
        raise DatasetError(f"{path}: corrupt matforge header") from None
    if header.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: foreign shard (format {header.get('format')!r})")
    version = header.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise DatasetError(f"{path}: shard schema version {version!r} is not supported (this matforge reads 1..{SCHEMA_VERSION})")
    return header
