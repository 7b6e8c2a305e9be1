"""The garbage collector skips the objects that outlive a conversion, and gets them all back."""

import gc
import multiprocessing
import threading
import weakref

import pytest

from bhive import collector


class Node:
    """An object in a reference cycle, which only the collector frees."""

    def __init__(self):
        self.itself = self


def cyclic_garbage_ref():
    return weakref.ref(Node())


def test_objects_existing_on_entry_are_skipped_inside_and_collected_after():
    before = gc.get_freeze_count()
    older = Node()
    older_ref = weakref.ref(older)
    with collector.long_lived_objects_frozen():
        assert gc.get_freeze_count() > before
        del older
        gc.collect()
        assert older_ref() is not None  # frozen: the collector does not look at it
        newer_ref = cyclic_garbage_ref()
        gc.collect()
        assert newer_ref() is None  # made inside: collected as usual
    assert gc.get_freeze_count() == before
    gc.collect()
    assert older_ref() is None


def test_nested_entries_unfreeze_on_the_last_exit_also_after_an_error():
    before = gc.get_freeze_count()
    with pytest.raises(RuntimeError):
        with collector.long_lived_objects_frozen():
            with collector.long_lived_objects_frozen():
                pass
            assert gc.get_freeze_count() > before
            raise RuntimeError("inside")
    assert gc.get_freeze_count() == before


def test_threads_share_one_frozen_span():
    before = gc.get_freeze_count()
    entered, leave = threading.Barrier(2), threading.Event()
    counts = []

    def hold():
        with collector.long_lived_objects_frozen():
            entered.wait()
            leave.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    with collector.long_lived_objects_frozen():
        entered.wait()
    counts.append(gc.get_freeze_count())  # the other thread is still inside
    leave.set()
    thread.join()
    assert counts[0] > before and gc.get_freeze_count() == before



def _enter_and_leave():
    with collector.long_lived_objects_frozen():
        pass


def test_a_process_forked_while_another_thread_holds_the_lock_still_freezes():
    # the workers of the futures executor are forked while other threads may be running
    with collector._lock:
        worker = multiprocessing.get_context("fork").Process(target=_enter_and_leave)
        worker.start()
    try:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
