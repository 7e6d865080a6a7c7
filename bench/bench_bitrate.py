"""Opus bitrate benchmark: word error rate and storage of the stored Opus, short and long speech.

    PYTHONPATH=. HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false \
        .venv/bin/python bench/bench_bitrate.py [--clips 12] [--long-s 165] [--bitrates 16 24 32 48 64]

Transcripts are made from the Opus that `opus_files` stores, not from the source MP3, so the
Opus bitrate is a quality setting as much as a storage one. This extends the transcription
benchmark (its clip builders and sample references) with one question: which default bitrate.

Inputs (not timed): `--clips` espeak-ng clips of 3-10 s plus the bundled samples (one a human
voice) as short-form speech, and one continuous espeak-ng monologue of about `--long-s`
seconds. Each is encoded with the pipeline's own `convert_to_opus` (libopus, mono) at every
bitrate; the source MP3 is the reference row. Every version is transcribed by the pipeline's
Transcriber (real Whisper base, int8, CPU, language en, batch 8). Prints, per bitrate: corpus
WER on short and on long speech, and Opus bytes per audio-minute (what S3 stores). No
assertion: the table is the result, recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path

import bench_conversion as conversion
from bench_transcription import Clip, make_espeak_clip, sample_clips

from media.ffmpeg_binary import resolve_ffmpeg
from media.opus_convert import convert_to_opus
from models.transcriber import TranscriberSettings, load_transcriber
from models.whisper_models import default_models_root
from testing.archive_factory import make_speech_mp3
from testing.wer import corpus_word_error_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--long-s", type=float, default=165.0)
    parser.add_argument("--bitrates", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-bitrate-"))
    try:
        short = [
            make_espeak_clip(workdir / "clips" / f"clip_{i:03d}.mp3", args.seed * 1000 + i) for i in range(args.clips)
        ] + sample_clips(workdir)
        long = [make_long_clip(workdir / "long.mp3", args.long_s, args.seed)]
        model = load_transcriber(
            TranscriberSettings(
                model="base-bundled",
                models_root=str(default_models_root()),
                device="cpu",
                compute_type="int8",
                batch_size=8,
                language="en",
            )
        )
        ffmpeg = resolve_ffmpeg()
        print(
            f"{len(short)} short clips ({sum(c.seconds for c in short):.0f} s), "
            f"1 long clip ({long[0].seconds:.0f} s, {len(long[0].text.split())} words)\n"
        )
        rows = [("source MP3", *measure(model, short, long, lambda c: c.path))]
        for kbps in args.bitrates:

            def encode(clip: Clip, kbps=kbps) -> Path:
                target = workdir / f"opus{kbps}" / (Path(clip.member).stem + ".opus")
                target.parent.mkdir(parents=True, exist_ok=True)
                convert_to_opus(clip.path, target, ffmpeg=ffmpeg, bitrate_kbps=kbps)
                return target

            rows.append((f"Opus {kbps} kbps mono", *measure(model, short, long, encode)))

        print("| audio transcribed | WER short clips | WER long clip | KiB per audio-minute |")
        print("|---|---:|---:|---:|")
        for label, short_wer, long_wer, kib_per_min in rows:
            print(f"| {label} | {short_wer:.1%} | {long_wer:.1%} | {kib_per_min:.0f} |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def make_long_clip(path: Path, seconds: float, seed: int) -> Clip:
    """A continuous monologue: sentences of 8-20 words, spoken as one espeak-ng recording."""
    rng = random.Random(seed)
    words_needed = round(seconds * conversion.ESPEAK_WORDS_PER_S)
    sentences, count = [], 0
    while count < words_needed:
        n = rng.randint(8, 20)
        sentences.append(conversion.sentence(rng, n))
        count += n
    text = ". ".join(sentences) + "."
    make_speech_mp3(path, text)
    return Clip("long.mp3", path, text, conversion.clip_seconds(path), "espeak")


def measure(model, short: list[Clip], long: list[Clip], version) -> tuple[float, float, float]:
    """(WER short, WER long, KiB per audio-minute) of the files `version(clip)` makes."""
    results = {}
    total_bytes, total_s = 0, 0.0
    for group, clips in (("short", short), ("long", long)):
        paths = [version(clip) for clip in clips]
        total_bytes += sum(p.stat().st_size for p in paths)
        total_s += sum(c.seconds for c in clips)
        transcripts = model.transcribe_files(paths)
        results[group] = corpus_word_error_rate(
            [(clip.text, getattr(t, "text", "")) for clip, t in zip(clips, transcripts)]
        )
    return results["short"], results["long"], total_bytes / 1024 / (total_s / 60)


if __name__ == "__main__":
    main()
