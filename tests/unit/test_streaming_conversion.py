"""ConversionStream: bounded scratch (files in flight), every job's outcome, jobs run to the end."""

from __future__ import annotations

import threading
import time

from media.streaming_conversion import ConversionStream


def test_never_more_files_in_flight_than_allowed_and_every_outcome_arrives():
    lock, in_flight, peak = threading.Lock(), [0], [0]
    pulled_to_end = []

    def jobs():
        for i in range(40):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            yield i
        pulled_to_end.append(True)

    def convert(i):
        time.sleep(0.002 * (i % 3))
        return ("failed", i) if i % 7 == 0 else ("encoded", i)

    def upload(encoded):
        time.sleep(0.003)
        with lock:
            in_flight[0] -= 1
        return ("uploaded", encoded[1])

    def needs_upload(result):
        if result[0] == "failed":
            with lock:
                in_flight[0] -= 1
            return False
        return True

    stream = ConversionStream(convert, upload, needs_upload, workers=2, upload_workers=2, max_in_flight=5)
    outcomes = list(stream.run(jobs()))
    assert sorted(i for _, i in outcomes) == list(range(40))
    assert {kind for kind, i in outcomes if i % 7 == 0} == {"failed"}
    assert peak[0] <= 5
    assert pulled_to_end == [True]
