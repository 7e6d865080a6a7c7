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
)


@dataclass(frozen=True)
class Failure:
    name: str
    retryable: bool


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
    assert commit_in_batches(iter(range(5)), 2, committed.append) == [0, 1, 2, 3, 4]
    assert committed == [[0, 1], [2, 3], [4]]


def test_a_failed_commit_stops_before_the_next_batch():
    committed: list[list[int]] = []

    def commit(batch):
        if batch[0] == 2:
            raise RuntimeError("database down")
        committed.append(batch)

    with pytest.raises(RuntimeError):
        commit_in_batches(range(6), 2, commit)
    assert committed == [[0, 1]]


def test_only_transient_failures_send_the_step_round_again():
    raise_for_retryable([Failure("a", False)], 3, lambda f: f.name)  # definite: recorded, step succeeds
    with pytest.raises(FilesToRetry, match=r"1 of 3 files hit transient failures .*\(e.g. b\)"):
        raise_for_retryable([Failure("a", False), Failure("b", True)], 3, lambda f: f.name)


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
