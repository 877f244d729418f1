"""Reading ahead: the next case loads while the current one is worked on, in order, errors kept apart."""

from __future__ import annotations

import threading
import time

import pytest

from brasyn.inference.prefetch import prefetched


def test_the_next_item_loads_while_the_current_one_is_worked_on():
    second_started = threading.Event()
    threads = {}

    def load(item: int) -> int:
        threads[item] = threading.current_thread().name
        if item == 1:
            second_started.set()
        return item * 10

    results = []
    for item, get in prefetched([0, 1, 2], load):
        results.append(get())
        if item == 0:
            # the caller is still "sampling" case 0; case 1 must be loading meanwhile
            assert second_started.wait(timeout=10)
    assert results == [0, 10, 20]
    assert all(name.startswith("brasyn-prefetch") for name in threads.values())


def test_a_failed_load_raises_for_its_own_item_only():
    def load(item: str) -> str:
        if item == "bad":
            raise ValueError(f"cannot read {item}")
        return item.upper()

    outcomes = []
    for _, get in prefetched(["a", "bad", "c"], load):
        try:
            outcomes.append(get())
        except ValueError as exc:
            outcomes.append(str(exc))
    assert outcomes == ["A", "cannot read bad", "C"]


def test_unwanted_items_are_not_read_ahead_and_skipped_items_do_not_stall_the_stream():
    loaded = []

    def load(item: int) -> int:
        loaded.append(item)
        return item

    seen = []
    for item, get in prefetched(range(5), load, wanted=lambda i: i % 2 == 0):
        seen.append(item)
        if item == 4:
            assert get() == 4
    # 0 and 2 were read ahead although nobody asked (the caller skipped them); 1 and 3 never were
    assert seen == [0, 1, 2, 3, 4]
    assert sorted(loaded) == [0, 2, 4]


def test_disabled_reads_in_the_callers_thread_on_demand():
    names = []

    def load(item: int) -> int:
        names.append(threading.current_thread().name)
        return item

    values = [get() for _, get in prefetched([1, 2], load, enabled=False)]
    assert values == [1, 2]
    assert names == [threading.current_thread().name] * 2


def test_stopping_early_does_not_wait_for_the_rest():
    release = threading.Event()

    def load(item: int) -> int:
        if item > 0:
            release.wait(timeout=10)
        return item

    stream = prefetched(range(4), load)
    with pytest.raises(KeyboardInterrupt):
        for _item, get in stream:
            get()
            raise KeyboardInterrupt  # a signal during the first case, while case 1 is loading
    start = time.perf_counter()
    stream.close()  # what the CLI's closing() does: the blocked load of case 1 is not waited for
    assert time.perf_counter() - start < 2
    release.set()
