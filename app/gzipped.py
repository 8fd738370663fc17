"""gzip copies of big files (X.gz beside X), written once and shared by the server, the build and the
shipped snapshot: a server without gzip support (or a static host) can still send gzip."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

GZIP_SUFFIXES = {".wasm", ".mjs", ".js", ".css", ".zip", ".json", ".onnx", ".data", ".txt", ".svg"}
MIN_BYTES = 1024
MAX_RATIO = 0.95  # keep X.gz only where gzip saves at least 5% (not for already-deflated zips)


def gzip_file(src: Path, level: int = 6) -> bool:
    """Write src.gz when it is worth it (fresh ones are kept); remove a stale or useless one. True if src.gz is there."""
    gz = src.with_name(src.name + ".gz")
    st = src.stat()
    if gz.is_file() and gz.stat().st_mtime >= st.st_mtime:
        return True
    gz.unlink(missing_ok=True)
    if src.suffix not in GZIP_SUFFIXES or st.st_size < MIN_BYTES:
        return False
    data = gzip.compress(src.read_bytes(), compresslevel=level, mtime=0)
    if len(data) > st.st_size * MAX_RATIO:
        return False
    tmp = gz.with_name(gz.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, gz)
    return True
