"""Per-file work of an archive step, without Dagster: which files are still to do, and their
outcomes committed batch by batch.

opus_files, transcripts and classifications all work the same way: split the partition's
files into those already done for this archive version / model / policy version and those to
do; do the rest in batches, committing each batch in one transaction, so a lost worker costs
one batch and a retry skips what was committed. A batch whose tool throws is split until the
file that throws is alone, so the others finish. Each file's failure is its own outcome
(results_db/failures.py); the step fails at its end, after everything else is committed, only
while some files are still to be tried again (a service's failure, or an unclear one tried
fewer times than allowed), so the step's retry policy runs again for those files only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


class FilesToRetry(Exception):
    """Some files are still to be tried again and were left as they were; everything else is
    committed. Raised at the end of the step so its retry policy runs again, for those only."""


class MayBeRetryable(Protocol):
    @property
    def retryable(self) -> bool: ...


def split_done(items: Iterable[T], is_done: Callable[[T], bool]) -> tuple[list[T], list[T]]:
    """(items already done, items still to do), each in the given order."""
    done: list[T] = []
    todo: list[T] = []
    for item in items:
        (done if is_done(item) else todo).append(item)
    return done, todo


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter), pulled lazily: a batch is
    handed on as soon as it is full, while the items behind it are still being produced."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= max(1, size):
            yield batch
            batch = []
    if batch:
        yield batch


def commit_in_batches(outcomes: Iterable[T], size: int, commit: Callable[[list[T]], Sequence[T]]) -> list[T]:
    """Every outcome as `commit` stored it (its return value: a failure may come back settled),
    committing each batch of `size` of them, in order."""
    committed: list[T] = []
    for batch in batches(outcomes, size):
        committed += commit(batch)
    return committed


class PreparedAhead(Generic[K]):
    """`prepare(keys)` has run for a key before `ensure(key)` returns, `size` keys a call: the key
    asked for and the next ones of `order` not prepared yet, so keys used in `order` cost one
    call per `size` of them (in any other order still at most one call per key). A call that
    raises prepares nothing; `ensure` then raises too and a later one tries again."""

    def __init__(self, order: Iterable[K], size: int, prepare: Callable[[list[K]], None]):
        self._pending = dict.fromkeys(order)
        self._size = max(1, size)
        self._prepare = prepare

    def ensure(self, key: K) -> None:
        if key not in self._pending:
            return
        ahead = (k for k in self._pending if k != key)
        keys = [key, *itertools.islice(ahead, self._size - 1)]
        self._prepare(keys)
        for prepared in keys:
            del self._pending[prepared]


def split_on_error(items: Sequence[T], work: Callable[[Sequence[T]], Sequence[R]]) -> list[R | Exception]:
    """`work(items)`, one result per item; when a batch raises, its halves are tried on their
    own, down to single items, so an item that always makes the tool throw gets the exception
    and the others their results. One such item among n costs about 2 x n items of work; a
    batch that fails for its size (out of memory) goes through as smaller batches."""
    try:
        return list(work(items))
    except Exception as exc:
        if len(items) <= 1:
            return [exc] * len(items)
        middle = len(items) // 2
        return split_on_error(items[:middle], work) + split_on_error(items[middle:], work)


def raise_for_retryable(failures: Sequence[MayBeRetryable], todo: int) -> None:
    """FilesToRetry if any of `failures` (as they stand after their commit) is still to be
    tried again; the message names the first."""
    retry = [f for f in failures if f.retryable]
    if retry:
        raise FilesToRetry(
            f"{len(retry)} of {todo} files are to be tried again and were left as they were "
            f"(e.g. {retry[0]}); the rest are committed, a retry does them"
        )
