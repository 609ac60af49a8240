"""The progress-bar protocol library code reports through; the CLI supplies real bars (tqdm)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int) -> Any: ...

    def set_postfix_str(self, s: str) -> Any: ...


ProgressFactory = Callable[[int, str], contextlib.AbstractContextManager[Bar]]


class _NoBar:
    def update(self, n: int) -> None:
        return None

    def set_postfix_str(self, s: str) -> None:
        return None


@contextlib.contextmanager
def no_progress(total: int, desc: str) -> Iterator[Bar]:
    yield _NoBar()
