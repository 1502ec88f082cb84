"""Streaming access to large JSON sources (MPtrj, Matbench) with ijson, in bounded memory.

* :func:`open_json_bytes` opens a ``.json`` or gzipped JSON file as a binary stream.
* :class:`NonFiniteAsStrings` wraps that stream and turns the bare ``NaN``, ``Infinity`` and
  ``-Infinity`` tokens that Python's ``json.dump`` writes (and that strict JSON parsers such as
  ijson reject) into the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. A file holding one
  NaN label therefore stays readable: the record with the NaN is skipped by validation instead of
  the whole file failing half-way through. A token is rewritten only where a JSON value can start
  (after ``:``, ``,`` or ``[``) and where one ends (before ``,``, ``]`` or ``}``); a string that
  itself contains such a pattern (``"x: NaN,"``) is corrupted by the rewrite and then fails to
  parse, which is reported as a file error, never as wrong data.
* :func:`head_events` parses the first few KB of a file for cheap format sniffing.
* :func:`stream_error` turns parser and decompression errors into a :class:`SourceError`.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from matforge.datasets.errors import SourceError

GZIP_MAGIC = b"\x1f\x8b"

_NON_FINITE = re.compile(rb"([\[:,]\s*)(-?(?:NaN|Infinity))(?=\s*[,\]}])")
_VALUE_STARTS = (b",", b":", b"[")


def is_gzip(path: Path) -> bool:
    """True if ``path`` starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == GZIP_MAGIC
    except OSError:
        return False


def open_json_bytes(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, gunzipping it on the fly when it is gzip-compressed."""
    try:
        if is_gzip(path):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise SourceError(path, f"cannot open ({exc.strerror or exc})") from None


class NonFiniteAsStrings:
    """A binary stream that rewrites bare NaN/Infinity tokens of ``raw`` into JSON strings.

    Reads ``raw`` in blocks of ``block`` bytes. The bytes after the last ``,``/``:``/``[`` of a
    block are held back until the next block arrives, so a token split across two blocks is
    still seen whole. ``consumed`` counts the raw bytes read so far (for error messages).
    """

    def __init__(self, raw: BinaryIO, block: int = 1 << 16) -> None:
        self._raw = raw
        self._block = block
        self._pending = b""
        self._ready = b""
        self._offset = 0
        self._eof = False
        self.consumed = 0

    @staticmethod
    def _rewrite(data: bytes) -> bytes:
        if b"NaN" not in data and b"Infinity" not in data:
            return data
        return _NON_FINITE.sub(rb'\1"\2"', data)

    def _fill(self) -> None:
        """Make at least one byte ready, unless the stream is exhausted."""
        while self._offset >= len(self._ready) and not self._eof:
            data = self._raw.read(self._block)
            self.consumed += len(data)
            if not data:
                self._eof = True
                self._ready, self._offset, self._pending = self._rewrite(self._pending), 0, b""
                return
            buf = self._pending + data
            cut = max(buf.rfind(c) for c in _VALUE_STARTS)
            if cut <= 0:  # no safe cut point yet: keep everything for the next block
                self._pending = buf
                continue
            # Every token match that starts before `cut` also ends before it (a match holds
            # no `,:[` after its first byte), but its look-ahead may need bytes after `cut`:
            # rewrite with the whole buffer visible, then hand out only the part before `cut`.
            head = buf[:cut]
            if b"NaN" in buf or b"Infinity" in buf:
                pieces, pos = [], 0
                for m in _NON_FINITE.finditer(buf):
                    if m.start() >= cut:
                        break
                    pieces += [buf[pos:m.start()], m.group(1), b'"', m.group(2), b'"']
                    pos = m.end()
                pieces.append(buf[pos:cut])
                head = b"".join(pieces)
            self._ready, self._offset, self._pending = head, 0, buf[cut:]

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if n is None or n < 0:
            chunks = []
            while True:
                part = self.read(1 << 20)
                if not part:
                    return b"".join(chunks)
                chunks.append(part)
        self._fill()
        part = self._ready[self._offset:self._offset + n]
        self._offset += len(part)
        return part

    def close(self) -> None:
        self._raw.close()


def head_events(path: Path, nbytes: int = 65536, max_events: int = 400) -> list[tuple[str, Any]]:
    """The first ijson ``basic_parse`` events of ``path`` (gunzipped if needed).

    Parsing stops silently where the head is cut off or malformed; an unreadable file gives ``[]``.
    """
    import ijson

    try:
        with open_json_bytes(path) as f:
            head = f.read(nbytes)
    except (SourceError, OSError, EOFError, zlib.error):
        return []
    events: list[tuple[str, Any]] = []
    try:
        for event in ijson.basic_parse(NonFiniteAsStrings(_BytesSource(head))):
            events.append(event)
            if len(events) >= max_events:
                break
    except Exception:  # cut-off head or not JSON at all: keep what was parsed
        pass
    return events


class _BytesSource:
    """Minimal binary stream over a bytes object."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else self._pos + n
        part = self._data[self._pos:end]
        self._pos += len(part)
        return part

    def close(self) -> None:
        pass


def stream_error(path: Path, exc: BaseException, consumed: int | None = None) -> SourceError:
    """A :class:`SourceError` for a parser or decompression failure while streaming ``path``."""
    import ijson

    where = f" after {consumed:,} bytes" if consumed else ""
    text = str(exc).lower()
    if isinstance(exc, ijson.JSONError) and ("premature eof" in text or "incomplete" in text):
        return SourceError(path, f"truncated JSON: the file ends in the middle of a value{where}")
    if isinstance(exc, ijson.JSONError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return SourceError(path, f"invalid JSON{where} ({first[:160]})")
    if isinstance(exc, EOFError):
        return SourceError(path, f"truncated gzip stream{where} ({exc})")
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return SourceError(path, f"corrupt gzip stream{where} ({exc})")
    if isinstance(exc, OSError):
        return SourceError(path, f"read error{where} ({exc.strerror or exc})")
    return SourceError(path, f"{type(exc).__name__}: {exc}")
