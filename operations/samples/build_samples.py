"""Build the bundled demo archives from the committed parts. Run by hand after changing them:

    python operations/samples/build_samples.py

Needs espeak-ng on PATH and the imageio-ffmpeg wheel (its ffmpeg has libmp3lame). The output
is byte-for-byte reproducible with the same espeak-ng, ffmpeg and pyarrow versions: fixed
gzip and tar timestamps, sorted members, no owner names, bit-exact encoder settings.

Writes, next to this file:
  batch_2026_11_01.tar.gz  4 synthetic clips, one real human voice (clips/goforward.mp3, with
                           its licence), metadata.parquet with one row that has no MP3
  batch_2026_11_02.tar     2 synthetic clips and their own metadata.parquet
  references.json          {archive file: {member: spoken text}} for transcription checks
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import subprocess
import tarfile
import tempfile
from decimal import Decimal
from pathlib import Path

import imageio_ffmpeg
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
PARTS = HERE / "parts"
FIXED_MTIME = 1_793_491_200  # 2026-11-01T00:00:00Z

HUMAN_VOICE_TEXT = "go forward ten meters"  # pocketsphinx test data, see parts/LICENSE.pocketsphinx

# (meta_id, text, handle, followers, hashtags, like_ratio, posted "YYYY-MM-DD HH:MM" UTC)
BATCH_1_CLIPS = [
    (
        "clip_0001",
        "Just finished my morning run by the river, the weather was perfect.",
        "@maya.runs",
        1840,
        ["running", "morning"],
        "0.9412",
        "2026-10-31 06:12",
    ),
    (
        "clip_0002",
        "Check out my new sourdough recipe, the link is in my bio.",
        "@breadbytom",
        25310,
        ["baking", "sourdough"],
        "0.8875",
        "2026-10-31 09:47",
    ),
    (
        "clip_0003",
        "You are a stupid idiot and nobody wants to watch your videos.",
        "@anon_4821",
        12,
        [],
        "0.1200",
        "2026-10-31 13:05",
    ),
    (
        "clip_0004",
        "Thank you all for ten thousand followers, you are amazing.",
        "@lena.draws",
        10004,
        ["milestone", "art"],
        "0.9730",
        "2026-10-31 18:30",
    ),
]
BATCH_2_CLIPS = [
    (
        "clip_0101",
        "Our cat just learned how to open the fridge, please send help.",
        "@catdad",
        560,
        ["cats", "funny"],
        "0.9650",
        "2026-11-01 08:15",
    ),
    (
        "clip_0102",
        "Here are three quick tips for studying before your exams.",
        "@study.with.sam",
        4410,
        ["studytips"],
        "0.9021",
        "2026-11-01 10:02",
    ),
]
HUMAN_VOICE_ROW = ("goforward", "@robot.lab", 302, ["robotics"], "0.7500", "2026-10-31 20:41")
ORPHAN_ROW = ("clip_0099", "@deleted.account", 0, ["removed"], "0.0000", "2026-10-31 23:59")  # no MP3

METADATA_SCHEMA = pa.schema(
    [
        ("meta_id", pa.string()),
        ("posted_at", pa.timestamp("us", tz="UTC")),
        ("creator", pa.struct([("handle", pa.string()), ("followers", pa.int64())])),
        ("hashtags", pa.list_(pa.string())),
        ("like_ratio", pa.decimal128(5, 4)),
    ]
)


def main() -> None:
    batch_1 = {f"clips/{meta_id}.mp3": speech_mp3(text) for meta_id, text, *_ in BATCH_1_CLIPS}
    batch_1["clips/goforward.mp3"] = mp3_from_file(PARTS / "goforward.wav")
    batch_1["LICENSE.pocketsphinx"] = (PARTS / "LICENSE.pocketsphinx").read_bytes()
    batch_1["metadata.parquet"] = metadata_parquet(without_text(BATCH_1_CLIPS) + [HUMAN_VOICE_ROW, ORPHAN_ROW])
    batch_2 = {f"clips/{meta_id}.mp3": speech_mp3(text) for meta_id, text, *_ in BATCH_2_CLIPS}
    batch_2["metadata.parquet"] = metadata_parquet(without_text(BATCH_2_CLIPS))

    (HERE / "batch_2026_11_01.tar.gz").write_bytes(gzip.compress(tar_bytes(batch_1), mtime=0))
    (HERE / "batch_2026_11_02.tar").write_bytes(tar_bytes(batch_2))
    references = {
        "batch_2026_11_01.tar.gz": {f"clips/{m}.mp3": text for m, text, *_ in BATCH_1_CLIPS}
        | {"clips/goforward.mp3": HUMAN_VOICE_TEXT},
        "batch_2026_11_02.tar": {f"clips/{m}.mp3": text for m, text, *_ in BATCH_2_CLIPS},
    }
    (HERE / "references.json").write_text(json.dumps(references, indent=2, sort_keys=True) + "\n")
    for name in ("batch_2026_11_01.tar.gz", "batch_2026_11_02.tar", "references.json"):
        print(f"{name}: {(HERE / name).stat().st_size} bytes")


def without_text(clips: list[tuple]) -> list[tuple]:
    """Metadata rows of clips: everything but the spoken text, which goes to references.json."""
    return [(meta_id, *metadata) for meta_id, _text, *metadata in clips]


def speech_mp3(text: str) -> bytes:
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    return encode_mp3(["-f", "wav", "-i", "pipe:0"], stdin=wav)


def mp3_from_file(path: Path) -> bytes:
    return encode_mp3(["-i", str(path)])


def encode_mp3(input_args: list[str], stdin: bytes | None = None) -> bytes:
    """Mono 64 kbps MP3 with its LAME header but no tags that name the encoder version.

    Written to a real file, not a pipe: ffmpeg fills in the Xing/LAME header (frame count,
    encoder delay) by seeking back at the end, and that header is what tells a player, and
    the pipeline's truncation check, how long the clip really is."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *input_args]
    command += ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact", "-id3v2_version", "0"]
    command += ["-ac", "1", "-c:a", "libmp3lame", "-b:a", "64k"]
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "clip.mp3"
        subprocess.run([*command, str(target)], input=stdin, check=True, capture_output=True)
        return target.read_bytes()


def metadata_parquet(rows: list[tuple]) -> bytes:
    records = [
        {
            "meta_id": meta_id,
            "posted_at": dt.datetime.strptime(posted, "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC),
            "creator": {"handle": handle, "followers": followers},
            "hashtags": hashtags,
            "like_ratio": Decimal(like_ratio),
        }
        for meta_id, handle, followers, hashtags, like_ratio, posted in rows
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=METADATA_SCHEMA), buffer)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(members[name]), FIXED_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(members[name]))
    return buffer.getvalue()


if __name__ == "__main__":
    main()
