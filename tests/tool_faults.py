"""Inputs that make a tool fail every time, for the per-file outcome drills.

- ffmpeg: `crashing_ffmpeg()` writes a wrapper (FFMPEG_BINARY) that runs the real ffmpeg,
  except on an input whose bytes carry FFMPEG_CRASH: there ffmpeg dies of SIGSEGV, as a decoder
  bug on a malformed frame makes it; each crash appends a line to a log.
- Whisper and the scorer: no real input makes the real models throw on purpose, so `install()`
  wraps them (the one fake): the real Whisper's batched call raises a CUDA error whenever its
  batch holds a file whose bytes carry WHISPER_THROWS (an ID3 title, which ffmpeg copies into
  the Opus file: `with_title`), and the real scorer raises whenever its batch holds a transcript
  with SCORER_THROWS_ON. A batch holding a file titled WHISPER_SLOW takes WHISPER_SLOW_S longer
  (a long step), each start noted in the file TOOL_FAULTS_SLOW_LOG names (the process's pid). Separate processes (Celery workers) get the same wrappers from
  tests/tool_fault_hook/sitecustomize.py with TOOL_FAULTS=1 and that folder on PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from testing.archive_factory import build_tar, ffmpeg_exe, make_speech_mp3

FFMPEG_CRASH = "FFMPEG-CRASHES-ON-THIS"
WHISPER_THROWS = "WHISPER-THROWS-ON-THIS"
WHISPER_SLOW = "WHISPER-IS-SLOW-ON-THIS"
WHISPER_SLOW_S = 30
SCORER_THROWS_ON = "giraffe"  # spoken in the clip, so it is in its transcript
HOOK = Path(__file__).parent / "tool_fault_hook"
GOOD_CLIPS = [
    "the weather is lovely today in the park",
    "we planted tomatoes and beans in the garden",
    "the train to the city leaves at nine",
    "my sister is learning to play the violin",
    "the library opens early on saturday",
    "please bring a warm coat for the trip",
]
# Each bad member, the stage its tool fails at, and the reason it ends with.
BAD_CLIPS = {
    "clips/crash.mp3": ("conversion", "ffmpeg was killed by signal 11"),
    "clips/whisper.mp3": ("transcription", "RuntimeError: CUDA error: an illegal memory access was encountered"),
    "clips/scorer.mp3": ("classification", "scoring profanity: RuntimeError: CUDA error: device-side assert triggered"),
}


def archive_with_bad_files(folder: Path, name: str, *, gzip: bool = False) -> Path:
    """Six good speech clips (clips/good{i}.mp3) and the three BAD_CLIPS, as one tar."""
    folder.mkdir(parents=True, exist_ok=True)
    good = [(f"clips/good{i}.mp3", make_speech_mp3(folder / f"good{i}.mp3", t)) for i, t in enumerate(GOOD_CLIPS)]
    crash = make_speech_mp3(folder / "crash.mp3", "this clip crashes the decoder")
    crash.write_bytes(crash.read_bytes() + FFMPEG_CRASH.encode())  # trailing junk an MP3 decoder skips
    throws = with_title(make_speech_mp3(folder / "throws.mp3", "this clip makes whisper throw"), WHISPER_THROWS)
    scorer = make_speech_mp3(folder / "scorer.mp3", f"the {SCORER_THROWS_ON} is very tall")
    bad = [("clips/crash.mp3", crash), ("clips/whisper.mp3", throws), ("clips/scorer.mp3", scorer)]
    return build_tar(folder / f"{name}.tar{'.gz' if gzip else ''}", [*good, *bad], gzip=gzip)


def crashing_ffmpeg(folder: Path, real: str) -> tuple[Path, Path]:
    """(the wrapper, the log of its crashes)."""
    wrapper, crashes = folder / "ffmpeg-crashing", folder / "ffmpeg-crashes.log"
    wrapper.write_text(
        "#!/bin/bash\n"
        'input=""; previous=""\n'
        'for arg in "$@"; do [ "$previous" = "-i" ] && input="$arg"; previous="$arg"; done\n'
        f'if [ -n "$input" ] && grep -q "{FFMPEG_CRASH}" "$input" 2>/dev/null; then\n'
        f'    echo "$input" >> "{crashes}"\n'
        "    kill -SEGV $$\n"
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, crashes


def with_title(mp3: Path, title: str) -> Path:
    """The same audio with an ID3 title (ffmpeg carries it into the Opus file's comments)."""
    titled = mp3.with_name(f"{mp3.stem}-titled.mp3")
    command = [ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(mp3), "-metadata", f"title={title}", "-c", "copy"]
    subprocess.run([*command, str(titled)], check=True)
    return titled


def hook_environment() -> dict[str, str]:
    """Variables that give a new Python process (a Celery worker) the wrappers of `install`."""
    path = os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))
    return {"TOOL_FAULTS": "1", "PYTHONPATH": path}


def install(patch=setattr) -> None:
    """Wrap the real Whisper and the real scorer so they throw on the marked inputs; `patch`:
    e.g. pytest's monkeypatch.setattr, so the wrappers go when the test ends."""
    from models.profanity_scorer import ProfanityScorer
    from models.transcriber import Transcriber

    transcribe, score = Transcriber.transcribe_files, ProfanityScorer.score

    def transcribe_files(self, paths):
        if any(WHISPER_THROWS.encode() in Path(p).read_bytes() for p in paths):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if any(WHISPER_SLOW.encode() in Path(p).read_bytes() for p in paths):
            with open(os.environ.get("TOOL_FAULTS_SLOW_LOG", os.devnull), "a") as log:
                log.write(f"{os.getpid()}\n")
            time.sleep(WHISPER_SLOW_S)
        return transcribe(self, paths)

    def score_contents(self, policy, contents):
        if any(SCORER_THROWS_ON in content.lower() for content in contents):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return score(self, policy, contents)

    patch(Transcriber, "transcribe_files", transcribe_files)
    patch(ProfanityScorer, "score", score_contents)
