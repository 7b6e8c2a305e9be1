"""Large files written and read past the page cache (``O_DIRECT``).

Pieces are written once and read once, and shards are written once and read later by a
training, often on another machine. Written through the page cache, every such byte is first
copied into a new cache page. On a virtual machine whose host backs guest memory only when
it is first touched and takes freed memory back a few seconds later (free page reporting,
common on cloud machines), each new page costs a fault in the host: writes then run at about
0.5 GB/s of CPU time, more than all the conversion's other work per byte. With direct I/O
the bytes go from a small aligned staging buffer to the device, and the CPU only copies them
into that buffer.

Direct I/O needs offsets and lengths in whole blocks, so a file is written in whole blocks
and then cut to its size, and a read takes the blocks around the bytes asked for. Files under
a mebibyte are written and read through the page cache all the same. Where the
file system refuses ``O_DIRECT`` (tmpfs, several network and FUSE file systems) or the
system has none, the same functions write and read through the page cache, and so does every
call while ``BHIVE_DIRECT_IO=off`` is set.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: offsets and lengths of direct I/O are multiples of this (the largest logical block size in use)
BLOCK = 4096
#: the staging buffer of each thread
STAGING_BYTES = 8 * 2**20
#: smaller files go through the page cache: their bytes cost little there, and a direct read
#: of a few blocks waits for the device where a cached read would not
DIRECT_MIN_BYTES = 2**20
#: environment variable that turns direct I/O off ("off", "0", "no" or "false")
SWITCH = "BHIVE_DIRECT_IO"

_DIRECT = getattr(os, "O_DIRECT", 0)
_staging = threading.local()


class ShortFileError(OSError):
    """A file that ends before the bytes asked for."""


def enabled() -> bool:
    """Whether direct I/O is tried at all: the system has it and ``BHIVE_DIRECT_IO`` does not
    turn it off."""
    return bool(_DIRECT) and os.environ.get(SWITCH, "").strip().lower() not in {"off", "0", "no", "false"}


def write_file(path: Path, parts: Iterable) -> bool:
    """Write the bytes of ``parts`` (buffers: bytes, C-contiguous arrays), one after the other,
    to the new file ``path``; returns whether they went past the page cache."""
    parts = [_bytes_of(part) for part in parts]
    if sum(part.size for part in parts) >= DIRECT_MIN_BYTES:
        fd = _open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        if fd is not None:
            try:
                _write_direct(fd, parts)
                return True
            except OSError as error:
                if error.errno != errno.EINVAL:  # a block size larger than BLOCK: use the page cache
                    raise
            finally:
                os.close(fd)
    with open(path, "wb") as stream:
        stream.writelines(parts)
    return False


def array_header(values: np.ndarray) -> bytes:
    """The ``.npy`` header (format 1.0, as ``np.save`` writes it) of a C-contiguous array."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(values))
    return header.getvalue()


def save_array(path: Path, values: np.ndarray) -> None:
    """``np.save(path, values)``, written by :func:`write_file`."""
    values = np.ascontiguousarray(values)
    write_file(path, [array_header(values), values])


def read_into(path: Path, offset: int, out: np.ndarray) -> None:
    """Fill ``out`` (a C-contiguous array) with the bytes of ``path`` from ``offset`` on."""
    target = _bytes_of(out)
    if not target.size:
        return
    fd = _open_direct(path, os.O_RDONLY)
    if fd is not None and os.fstat(fd).st_size < DIRECT_MIN_BYTES:  # written through the page cache
        os.close(fd)
        fd = None
    if fd is not None:
        try:
            _read_direct(fd, path, offset, target)
            return
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
        finally:
            os.close(fd)
    with open(path, "rb", buffering=0) as stream:
        stream.seek(offset)
        done = 0
        while done < target.size:
            got = stream.readinto(target[done:])
            if not got:
                raise ShortFileError(f"{path} ends {target.size - done} bytes early")
            done += got


def _open_direct(path: Path, flags: int) -> int | None:
    """``os.open`` with ``O_DIRECT`` added; None where direct I/O is off or the file system
    refuses it, so that the caller uses the page cache."""
    if not enabled():
        return None
    try:
        return os.open(path, flags | _DIRECT, 0o644)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        return None


def _bytes_of(buffer) -> np.ndarray:
    """The bytes of ``buffer`` (bytes, or a C-contiguous array) as a uint8 array viewing them."""
    if isinstance(buffer, np.ndarray):
        if not buffer.flags.c_contiguous:
            raise ValueError("direct_io reads and writes C-contiguous arrays only")
        return buffer.reshape(-1).view(np.uint8)
    return np.frombuffer(buffer, dtype=np.uint8)


def _staging_buffer() -> tuple[mmap.mmap, np.ndarray]:
    """This thread's page-aligned staging buffer, made once and reused: new memory is what
    costs on the machines this module is for. Private: a worker process forked from this one
    gets its own copy, where a shared mapping would have both write into the same pages.

    In huge pages where the system has them (transparent huge pages, "madvise" or "always"):
    each direct read or write pins the buffer's pages for the device, and 2 MiB pages are 512
    times fewer pages to pin than 4 kiB ones (the merge of 2M jets, one core: 0.9-1.1 s of
    kernel time before, 0.55-0.7 s after)."""
    if getattr(_staging, "buffer", None) is None:
        buffer = mmap.mmap(-1, STAGING_BYTES, flags=mmap.MAP_PRIVATE)
        with contextlib.suppress(AttributeError, OSError):  # no such advice here: plain pages
            buffer.madvise(mmap.MADV_HUGEPAGE)
        _staging.buffer, _staging.view = buffer, np.frombuffer(buffer, dtype=np.uint8)
    return _staging.buffer, _staging.view


def _write_direct(fd: int, parts: list[np.ndarray]) -> None:
    buffer, view = _staging_buffer()
    filled = total = 0
    for source in parts:
        taken = 0
        while taken < len(source):
            count = min(len(source) - taken, STAGING_BYTES - filled)
            view[filled:filled + count] = source[taken:taken + count]
            filled, taken, total = filled + count, taken + count, total + count
            if filled == STAGING_BYTES:
                _write_all(fd, memoryview(buffer), STAGING_BYTES)
                filled = 0
    if filled:
        # the last block is written whole and the file cut back to its size
        padded = -(-filled // BLOCK) * BLOCK
        view[filled:padded] = 0
        _write_all(fd, memoryview(buffer), padded)
        os.ftruncate(fd, total)


def _write_all(fd: int, buffer: memoryview, count: int) -> None:
    done = 0
    while done < count:
        written = os.write(fd, buffer[done:count])
        if written % BLOCK:
            raise OSError(errno.EINVAL, "direct write of a partial block")
        done += written


def _read_direct(fd: int, path: Path, offset: int, target: np.ndarray) -> None:
    buffer, view = _staging_buffer()
    position, done = offset, 0
    while done < target.size:
        start = position - position % BLOCK
        span = min(STAGING_BYTES, -(-(position + target.size - done - start) // BLOCK) * BLOCK)
        got = os.preadv(fd, [memoryview(buffer)[:span]], start)
        usable = min(got - (position - start), target.size - done)
        if usable <= 0:
            raise ShortFileError(f"{path} ends {target.size - done} bytes early")
        target[done:done + usable] = view[position - start:position - start + usable]
        position, done = position + usable, done + usable
