"""Progress while predict runs: a bar over the cases with the log lines above it, and the next case read
while the current one is predicted."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TextIO

from tqdm import tqdm

from pipeline.predict.discovery import InputItem


class _AboveTheBar:
    """A text stream that writes through ``tqdm.write``, so log lines do not break a progress bar."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def logs_above_the_bar(enabled: bool) -> Iterator[None]:
    """Route the root logger's console handlers through tqdm.write while a progress bar is shown."""
    handlers = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler] if enabled else []
    streams = [h.setStream(_AboveTheBar(h.stream)) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)


def prefetch(pool: ThreadPoolExecutor, read: Any, items: list[InputItem]) -> Iterator[Future]:
    """Futures of read(item) in order, the next one submitted before the current one is handed out."""
    pending = pool.submit(read, items[0]) if items else None
    for i in range(len(items)):
        current = pending
        pending = pool.submit(read, items[i + 1]) if i + 1 < len(items) else None
        yield current
