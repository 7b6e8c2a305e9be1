"""Giving the memory a process has freed back to the operating system.

A run of ``law`` does its tasks one after another in one process: the merge into shards
follows the processing of chunks, whose freed memory the C library keeps in its heap, as
resident pages, for the allocations to come. The merge's buffers are too large to come from
that heap, so without this they would add to it, and the peak memory of the run would be the
processing's and the merge's together.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; the other C libraries have no such call
    except (AttributeError, OSError):
        return None


def release_freed_memory() -> bool:
    """Return the free pages of the heap to the system (glibc's ``malloc_trim``); returns
    whether the C library could be asked. The memory in use is not touched."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
