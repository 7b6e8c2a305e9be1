"""Freed heap memory goes back to the system before the merge allocates its buffers."""

import platform

import numpy as np
import pytest

from bhive import heap


def resident_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * 4096


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's heap")
def test_freed_heap_pages_are_returned_and_memory_in_use_is_kept():
    # 3,000 arrays of 64 kB come from the heap (below malloc's mmap threshold); freeing all but
    # the last keeps the heap's top in use, so the C library itself gives nothing back
    arrays = [np.ones(8192) for _ in range(3000)]
    kept = arrays[-1]
    del arrays
    before = resident_bytes()
    assert heap.release_freed_memory()
    assert before - resident_bytes() > 100 * 2**20
    assert kept.sum() == 8192
