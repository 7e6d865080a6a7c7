"""Per-file work of the archive steps (audio_assets/file_batches.py): done/to-do, batches,
commits, and the transient failures that send a step round again."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from audio_assets.file_batches import (
    FilesToRetry,
    PreparedAhead,
    batches,
    commit_in_batches,
    raise_for_retryable,
    split_done,
    split_on_error,
)


@dataclass(frozen=True)
class Failure:
    name: str
    retryable: bool

    def __str__(self) -> str:
        return self.name


def test_split_done_keeps_the_order_of_both_halves():
    done, todo = split_done(["a", "bb", "c", "dd", "e"], lambda name: len(name) == 2)
    assert (done, todo) == (["bb", "dd"], ["a", "c", "e"])
    assert split_done([], bool) == ([], [])


def test_batches_are_full_but_the_last_and_never_empty():
    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches(range(6), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(batches([], 3)) == []
    assert list(batches(range(3), 0)) == [[0], [1], [2]]  # a size below 1 still makes progress


def test_batches_hand_on_a_full_batch_before_the_next_item_is_made():
    made: list[int] = []

    def produce():
        for i in range(5):
            made.append(i)
            yield i

    stream = batches(produce(), 2)
    assert next(stream) == [0, 1] and made == [0, 1]  # the third item is not produced yet


def test_each_batch_is_committed_once_in_order_and_everything_is_returned():
    committed: list[list[int]] = []

    def commit(batch: list[int]) -> list[int]:
        committed.append(batch)
        return [-i for i in batch]  # as stored: what the commit hands back is what is returned

    assert commit_in_batches(iter(range(5)), 2, commit) == [0, -1, -2, -3, -4]
    assert committed == [[0, 1], [2, 3], [4]]


def test_a_failed_commit_stops_before_the_next_batch():
    committed: list[list[int]] = []

    def commit(batch):
        if batch[0] == 2:
            raise RuntimeError("database down")
        committed.append(batch)
        return batch

    with pytest.raises(RuntimeError):
        commit_in_batches(range(6), 2, commit)
    assert committed == [[0, 1]]


def test_only_failures_still_to_try_send_the_step_round_again():
    raise_for_retryable([Failure("a", False)], 3)  # the file's outcome: step succeeds
    with pytest.raises(FilesToRetry, match=r"1 of 3 files are to be tried again .*\(e.g. b\)"):
        raise_for_retryable([Failure("a", False), Failure("b", True)], 3)


def test_a_batch_that_throws_is_split_until_the_item_that_throws_is_alone():
    calls: list[list[int]] = []

    def work(items):
        calls.append(list(items))
        if 5 in items:
            raise RuntimeError("the tool crashed")
        return [i * 10 for i in items]

    results = split_on_error(list(range(8)), work)
    assert [r for r in results if not isinstance(r, Exception)] == [0, 10, 20, 30, 40, 60, 70]
    assert isinstance(results[5], RuntimeError) and str(results[5]) == "the tool crashed"
    # 8 -> 4 + 4 -> 2 + 2 -> 1 + 1: one thrower among 8 costs 8 + 8 + 4 + 2 = 22 items of work (< 3 x 8)
    assert calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]
    assert sum(len(c) for c in calls) == 22


def test_a_batch_that_throws_for_every_item_gives_each_the_error_and_nothing_else():
    def work(items):
        raise MemoryError("out of memory") if len(items) > 2 else ValueError(f"bad {items[0]}")

    results = split_on_error([1, 2, 3, 4], work)
    assert [str(r) for r in results] == ["bad 1", "bad 2", "bad 3", "bad 4"]
    assert split_on_error([], work) == []


def test_keys_are_prepared_before_use_a_batch_a_call():
    calls: list[list[str]] = []
    ahead = PreparedAhead("abcdefg", 3, calls.append)
    for key in "abcdefg":
        ahead.ensure(key)
        assert any(key in call for call in calls)  # prepared before ensure returned
    assert calls == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


def test_keys_used_out_of_order_are_each_prepared_once():
    calls: list[list[str]] = []
    ahead = PreparedAhead("abcde", 2, calls.append)
    for key in "dbcae":
        ahead.ensure(key)
    ahead.ensure("z")  # not one of the keys: nothing to prepare
    assert calls == [["d", "a"], ["b", "c"], ["e"]]
    assert sorted(k for call in calls for k in call) == list("abcde")


def test_a_failed_preparation_prepares_nothing_and_is_tried_again():
    calls: list[list[str]] = []
    failures = iter([True, False])

    def prepare(keys: list[str]) -> None:
        if next(failures, False):
            raise ConnectionError("database down")
        calls.append(keys)

    ahead = PreparedAhead("abc", 2, prepare)
    with pytest.raises(ConnectionError):
        ahead.ensure("a")
    ahead.ensure("a")
    ahead.ensure("b")
    ahead.ensure("c")
    assert calls == [["a", "b"], ["c"]]
