"""Per-file work of an archive step, without Dagster: which files are still to do, and their
outcomes committed batch by batch.

opus_files, transcripts and classifications all work the same way: split the partition's
files into those already done for this archive version / model / policy version and those to
do; do the rest in batches, committing each batch in one transaction, so a lost worker costs
one batch and a retry skips what was committed; and fail the step at the end, after
everything else is committed, if some files met a transient failure (an upload after its
retries, scratch space), so the step's retry policy runs again for those files only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class FilesToRetry(Exception):
    """Some files met transient failures and were left as they were; everything else is
    committed. Raised at the end of the step so its retry policy runs again, for those only."""


class MayBeRetryable(Protocol):
    retryable: bool


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


def commit_in_batches(outcomes: Iterable[T], size: int, commit: Callable[[list[T]], None]) -> list[T]:
    """Every outcome, after `commit` has stored each batch of `size` of them, in order."""
    committed: list[T] = []
    for batch in batches(outcomes, size):
        commit(batch)
        committed += batch
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


def raise_for_retryable(
    failures: Sequence[MayBeRetryable], todo: int, describe: Callable[[MayBeRetryable], str]
) -> None:
    """FilesToRetry if any of `failures` is transient; the message names the first."""
    retry = [f for f in failures if f.retryable]
    if retry:
        raise FilesToRetry(
            f"{len(retry)} of {todo} files hit transient failures and were left as they were "
            f"(e.g. {describe(retry[0])}); the rest are committed, a retry does them"
        )
