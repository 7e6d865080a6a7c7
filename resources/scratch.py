"""Per-step scratch directories that cannot outlive the step that made them.

The seed leaked scratch space whenever a batch failed; here every directory is created by a
context manager that removes it in `finally`, whether the step succeeds, raises or is
interrupted by a retry.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ScratchFull(OSError):
    """Not enough free scratch space for what a step is about to write; transient: retried
    after a back-off, when other steps have freed theirs."""


class ScratchSpace(dg.ConfigurableResource):
    """Local disk for downloads and conversions: SCRATCH_ROOT/{run_id}/{step}-{execution}."""

    root: str = Field(
        default_factory=lambda: str(Path(tempfile.gettempdir()) / "audio-pipeline-scratch"),
        description="Directory under which each step gets its own folder",
    )

    def run_dir(self, run_id: str) -> Path:
        """SCRATCH_ROOT/{run_id}: the run's step folders, and what its steps share on this host
        (the archive copy); the sweep removes it if the run's steps could not."""
        path = Path(self.root) / _UNSAFE.sub("_", run_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def shared_dir(self, run_id: str, name: str) -> Iterator[Path]:
        """SCRATCH_ROOT/{run_id}/{name}, for what the run's steps share on this host, locked
        against the run's other step processes while held (an flock on {name}.lock, which the
        kernel frees if the process dies)."""
        folder = self.run_dir(run_id) / name
        folder.mkdir(exist_ok=True)
        with open(folder.parent / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove_shared_dir(self, run_id: str, name: str) -> None:
        """Call while holding shared_dir(run_id, name): the folder, its lock file, and the run
        folder once nothing else is in it."""
        run = self.run_dir(run_id)
        shutil.rmtree(run / name, ignore_errors=True)
        (run / f"{name}.lock").unlink(missing_ok=True)
        self.remove_run_dir_if_empty(run_id)

    @contextlib.contextmanager
    def step_dir(self, run_id: str, name: str) -> Iterator[Path]:
        """SCRATCH_ROOT/{run_id}/{name}: `name` names one step execution, so a twin of the step
        on the same host (its message delivered again) never touches this folder. One a killed
        execution left is the sweep's once the run has ended."""
        path = self.run_dir(run_id) / _UNSAFE.sub("_", name)
        path.mkdir(parents=True, exist_ok=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            self.remove_run_dir_if_empty(run_id)

    def remove_run_dir_if_empty(self, run_id: str) -> None:
        with contextlib.suppress(OSError):
            (Path(self.root) / _UNSAFE.sub("_", run_id)).rmdir()

    @staticmethod
    def ensure_free(path: Path, needed_bytes: int, purpose: str) -> None:
        """Raise ScratchFull unless `path`'s filesystem has `needed_bytes` free: checked before
        a download or an extraction, instead of discovering it halfway through."""
        free = shutil.disk_usage(path).free
        if free < needed_bytes:
            raise ScratchFull(
                f"scratch {path} has {free / 1e6:.1f} MB free, {purpose} needs {needed_bytes / 1e6:.1f} MB"
            )

    def sweep(self, *, older_than_s: float, active_run_ids: set[str]) -> tuple[list[str], int]:
        """Remove run folders untouched for `older_than_s` that belong to no active run
        (left by a killed worker, where no `finally` ran). Returns (removed, bytes freed)."""
        root = Path(self.root)
        if not root.is_dir():
            return [], 0
        active = {_UNSAFE.sub("_", run_id) for run_id in active_run_ids}
        cutoff = time.time() - older_than_s
        removed, freed = [], 0
        for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if run_dir.name in active or _newest_mtime(run_dir) > cutoff:
                continue
            freed += sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir.name)
        return removed, freed


def _newest_mtime(folder: Path) -> float:
    """A folder's age is that of its newest entry: a long step keeps writing into it."""
    return max([folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.rglob("*")])
