"""Reading ahead: the next item's loading runs on a background thread while the current one is worked on.

Loading a case (gzip decompression, percentiles, cropping) is numpy and zlib work that releases the GIL,
so on a GPU it hides entirely behind the sampling of the previous case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["prefetched"]

Item = TypeVar("Item")
Result = TypeVar("Result")


def _now(load: Callable[[Item], Result], item: Item) -> Callable[[], Result]:
    return lambda: load(item)


def prefetched(
    items: Iterable[Item],
    load: Callable[[Item], Result],
    wanted: Callable[[Item], bool] = lambda item: True,
    enabled: bool = True,
) -> Iterator[tuple[Item, Callable[[], Result]]]:
    """Yields ``(item, get)`` in order; ``get()`` returns ``load(item)`` or raises what it raised.

    While the caller works on one item, ``load`` of the next ``wanted`` item runs on a single background
    thread (at most one load ahead, so at most two items are in memory). Items that are not ``wanted``
    are yielded with a ``get`` that loads on demand. Closing the iterator early (a signal, an error)
    cancels the load ahead or lets it finish on its own; nothing it produced is used.
    """
    items = list(items)
    if not enabled:
        for item in items:
            yield item, _now(load, item)
        return
    ahead = [index for index, item in enumerate(items) if wanted(item)]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brasyn-prefetch")
    futures: dict[int, Future[Result]] = {}

    def submit(position: int) -> None:
        if position < len(ahead):
            futures[ahead[position]] = pool.submit(load, items[ahead[position]])

    submit(0)
    position = 1
    try:
        for index, item in enumerate(items):
            future = futures.pop(index, None)
            if future is None:
                yield item, _now(load, item)
                continue
            # one worker: the next load queues behind this one, so it runs while the caller works on
            # this item, and never more than one ahead
            submit(position)
            position += 1
            yield item, future.result
    finally:
        # a load not yet started is cancelled, one under way finishes unused
        pool.shutdown(wait=False, cancel_futures=True)
