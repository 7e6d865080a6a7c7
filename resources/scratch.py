"""Per-step scratch directories that cannot outlive the step that made them.

The seed leaked scratch space whenever a batch failed; here every directory is created by a
context manager that removes it in `finally`, whether the step succeeds, raises or is
interrupted by a retry.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ScratchSpace(dg.ConfigurableResource):
    """Local disk for downloads and conversions: SCRATCH_ROOT/{run_id}/{step}."""

    root: str = Field(
        default_factory=lambda: str(Path(tempfile.gettempdir()) / "audio-pipeline-scratch"),
        description="Directory under which each step gets its own folder",
    )

    @contextlib.contextmanager
    def step_dir(self, run_id: str, step: str) -> Iterator[Path]:
        path = Path(self.root) / _UNSAFE.sub("_", run_id) / _UNSAFE.sub("_", step)
        if path.exists():  # left by an earlier attempt of the same step (a retry)
            shutil.rmtree(path)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the run folder, once its last step is done
