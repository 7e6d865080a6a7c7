"""Convert and upload a stream of extracted files with bounded scratch space.

Files come from a lazy iterator (in opus_files, members copied out of the tar as it streams
by). The next one is pulled only when fewer than 2 x `workers` sources are waiting for or in
conversion and fewer than `max_in_flight` files are in the stream at all (encoded outputs
waiting for upload included). So a scratch disk needs room for the archive plus a handful of
files, not for every member at once, and a zero-filled archive cannot fill it.

ffmpeg runs in `workers` threads (one core each); uploads have a pool of their own, so a slow
object store never leaves a core idle waiting for a PUT. No Dagster here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

Job = TypeVar("Job")
Converted = TypeVar("Converted")
Outcome = TypeVar("Outcome")


class ConversionStream(Generic[Job, Converted, Outcome]):
    def __init__(
        self,
        convert: Callable[[Job], Converted | Outcome],
        upload: Callable[[Converted], Outcome],
        needs_upload: Callable[[Converted | Outcome], bool],
        *,
        workers: int,
        upload_workers: int,
        max_in_flight: int | None = None,
    ):
        """`convert(job)` returns something to upload, or a final outcome (a failure);
        `needs_upload` tells them apart. `upload(converted)` returns a final outcome."""
        self.convert, self.upload, self.needs_upload = convert, upload, needs_upload
        self.workers = max(1, workers)
        self.upload_workers = max(1, upload_workers)
        self.max_in_flight = max_in_flight or 2 * self.workers + self.upload_workers

    def run(self, jobs: Iterator[Job]) -> Generator[Outcome, None, None]:
        """Final outcomes, in completion order. `jobs` is advanced only when a slot is free
        and is always run to its end (so a tar reader's completeness check runs)."""
        in_flight: dict[Future, str] = {}  # future -> "convert" | "upload"
        exhausted = False
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="convert") as converters,
            ThreadPoolExecutor(self.upload_workers, thread_name_prefix="upload") as uploaders,
        ):
            while True:
                while (
                    not exhausted
                    and len(in_flight) < self.max_in_flight
                    and self._converting(in_flight) < 2 * self.workers
                ):
                    job = next(jobs, None)
                    if job is None:
                        exhausted = True
                    else:
                        in_flight[converters.submit(self.convert, job)] = "convert"
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    stage = in_flight.pop(future)
                    result = future.result()
                    if stage == "convert" and self.needs_upload(result):
                        in_flight[uploaders.submit(self.upload, result)] = "upload"
                    else:
                        yield result

    @staticmethod
    def _converting(in_flight: dict[Future, str]) -> int:
        return sum(1 for stage in in_flight.values() if stage == "convert")
