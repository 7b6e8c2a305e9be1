"""Keeping Python's garbage collector off the objects that outlive a conversion.

The collector's full pass visits every tracked object, and it runs whenever the objects that
survived its younger passes have grown by a quarter since the last one. After the imports of
the chain's libraries a process holds some 200,000 objects (about 0.1 s a full pass), and
reading a tree's metadata makes tens of thousands that live as long as its file is open: over
100 files the full passes took 2.4 s of a 25 s one-core conversion. Objects frozen with
``gc.freeze`` are left out of every pass, and freezing and unfreezing are constant-time.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0


def _new_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Leave the objects that exist on entry out of the collector's passes until exit; those
    made inside are collected as usual. On exit every frozen object is handed back to the
    collector (an object that became garbage in the meantime is collected then), so a caller's
    process keeps no frozen objects. Nests, also across threads: the outermost entry freezes,
    the last exit unfreezes. A process forked inside keeps the objects frozen at the fork for
    its lifetime, as a worker should: they are its parent's."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.unfreeze()
