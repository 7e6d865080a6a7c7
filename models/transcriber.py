"""Speech to text with WhisperX: pyannote VAD per file, then the speech chunks of many files
through one batched CTranslate2 Whisper together, regrouped by file.

Why not `FasterWhisperPipeline.transcribe`: it takes one file per call, so a partition of short
clips would run one mostly-empty batch per clip, and with per-file language detection it runs the
encoder twice on each file. Its pieces are reused as they are: the loader, the pyannote VAD and
its chunk merging, `log_mel_spectrogram`, the prompt builder, the decoding options and the
avg_logprob of `generate_segment_batched`. Each chunk still gets its own 30-s window: packing
several clips into one window measured twice the word error rate and mixed clips' text.

No Dagster here; `resources/transcriber.py` wraps this for the assets.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.whisper_models import BUNDLED_ALIASES, resolve_whisper_model

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30  # Whisper's fixed input window; VAD chunks are merged up to this length
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS


@dataclass(frozen=True)
class TranscriberSettings:
    """Everything that changes which model is loaded or what it writes; hashable, because it is
    the key of the per-process model cache."""

    model: str = "large-v2"  # hub name, "base-bundled", a local CTranslate2 dir, or a name under models_root
    models_root: str | None = None
    device: str = "auto"  # auto → cuda if available, else cpu
    compute_type: str = "auto"  # auto → float16 on cuda, int8 on cpu
    batch_size: int = 0  # speech segments per forward pass, across files; 0 = auto (whisper_batch_size)
    language: str | None = None  # None → detect per file
    threads: int = 0  # 0 → os.cpu_count()
    vad_method: str = "pyannote"  # its weights ship inside whisperx; silero would need torch.hub
    align: bool = False
    align_model_path: str | None = None  # local wav2vec2 dir for settings.language (English if None)


@dataclass(frozen=True)
class Transcript:
    """One file's transcript.

    `text` is "" when VAD found no speech (silence, tone, music): Whisper is not run on such
    files, so it cannot invent text for them.

    `confidence`, in [0, 1]: for an aligned file, the mean alignment score of its words; else
    the mean over segments of exp(avg_logprob) (the per-token probability, geometric mean, of the
    decoded text), each segment weighted by its duration. None when `text` is empty.

    `segments`: JSON-safe dicts, one per VAD speech chunk (≤ 30 s) that produced text:
    {"start", "end" (seconds in the file), "text", "avg_logprob", "no_speech_prob"}. When
    aligned, WhisperX's sentence segments instead: {"start", "end", "text", "words": [{"word",
    "start", "end", "score"}]}.
    """

    text: str
    language: str | None
    confidence: float | None
    segments: list[dict]
    audio_seconds: float


class TranscriptionError(Exception):
    """One file could not be transcribed; str() is the reason stored in the database.
    `transient`: not a property of the file (VAD crashed, out of memory), so the file is
    retried and its row left as it was; False only when its bytes do not decode."""

    def __init__(self, reason: str, *, transient: bool = False):
        super().__init__(reason)
        self.transient = transient


class ModelLoadError(RuntimeError):
    """The Whisper model (or VAD) could not be loaded: a configuration problem, not a file's."""


_cache: dict[TranscriberSettings, Transcriber] = {}
_cache_lock = threading.Lock()
_load_count = 0
_files_count = 0  # files handed to a model by this process, read by transcribed_files_count()


def load_transcriber(settings: TranscriberSettings) -> Transcriber:
    """The process-wide Transcriber for `settings`, loaded on first use: a long-lived worker
    loads each model once, however many partitions it runs."""
    global _load_count
    with _cache_lock:  # a second thread asking for the same model waits instead of loading it again
        if settings not in _cache:
            _cache[settings] = Transcriber(settings)
            _load_count += 1
            # faster-whisper's decode_audio ends each file with gc.collect(), a full collection
            # over every object the worker holds (~750,000 with Dagster, torch and pyannote):
            # 437 ms per file here. Freezing what exists now (the model, the libraries) leaves
            # the collector only the objects made since: 4 ms (bench/RESULTS.md).
            gc.freeze()
        return _cache[settings]


def transcript_model_name(settings: TranscriberSettings) -> str:
    """What transcripts.model records for these settings: model, compute type, a fixed language
    and alignment when used, since each changes the text or the meaning of the confidence.
    Known without loading the model, so a step can tell which files are already done."""
    if settings.model in BUNDLED_ALIASES:
        label = "base-ct2"
    else:
        label = Path(settings.model).name if Path(settings.model).is_dir() else settings.model
    compute_type = _pick_compute_type(settings.compute_type, _pick_device(settings.device))
    aligned = settings.align and _alignment_unavailable(settings.align_model_path) is None
    # A fixed language changes the text as much as the model does (detection is the default).
    language = f"-{settings.language}" if settings.language else ""
    return f"whisperx/{label}-{compute_type}{language}" + ("-aligned" if aligned else "")


def load_count() -> int:
    """How many models this process has actually loaded."""
    return _load_count


def transcribed_files_count() -> int:
    """How many files this process has handed to a Whisper model: counts model work across
    steps, e.g. that a step redelivered after a lost worker redoes no committed file."""
    return _files_count


@dataclass
class _Clip:
    """A decoded file on its way through the batched decoder."""

    index: int
    audio: np.ndarray
    spans: list[dict]  # VAD chunks, each ≤ 30 s: {"start", "end"} in seconds
    language: str | None = None
    segments: list[dict] = field(default_factory=list)


class Transcriber:
    """A loaded WhisperX model (with its VAD) and the batched transcription of many files."""

    def __init__(self, settings: TranscriberSettings):
        self.settings = settings
        self.device = _pick_device(settings.device)
        self.compute_type = _pick_compute_type(settings.compute_type, self.device)
        self.threads = settings.threads or os.cpu_count() or 1
        # Counters that show cross-file batching at work (tests and benchmark metadata read them).
        self.decode_batches = 0
        self.language_batches = 0
        self.load_seconds = self._load()
        self.batch_size = whisper_batch_size(settings.batch_size, self.device, _free_gpu_bytes(self.device))
        self._tokenizers: dict[str, object] = {}
        self._aligner = load_word_aligner(settings, self.device)
        self.model_name = self._describe()

    def _load(self) -> float:
        import torch
        import whisperx

        started = time.monotonic()
        # pyannote 4 reports usage over the network unless told not to; workers may be offline.
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
        torch.set_num_threads(self.threads)  # pyannote VAD (and alignment) run on torch
        models_root = Path(self.settings.models_root) if self.settings.models_root else None
        self.model_path = resolve_whisper_model(self.settings.model, models_root)
        try:
            self._pipeline = whisperx.load_model(
                self.model_path,
                device=self.device,
                compute_type=self.compute_type,
                language=self.settings.language,
                vad_method=self.settings.vad_method,
                threads=self.threads,
            )
        except Exception as exc:
            raise ModelLoadError(_load_failure(self.settings.model, self.model_path, exc)) from exc
        return time.monotonic() - started

    def _describe(self) -> str:
        return transcript_model_name(self.settings)

    def transcribe_files(self, paths: Sequence[Path]) -> list[Transcript | TranscriptionError]:
        """Transcripts of `paths`, in the same order; a file that cannot be decoded gets a
        TranscriptionError in its place and the others go on."""
        global _files_count
        _files_count += len(paths)
        results: list[Transcript | TranscriptionError | None] = [None] * len(paths)
        clips: list[_Clip] = []
        for index, path in enumerate(paths):
            try:
                clip = self._prepare(index, Path(path))
            except TranscriptionError as error:
                results[index] = error
                continue
            if clip.spans:
                clips.append(clip)
            else:
                results[index] = Transcript("", None, None, [], _seconds(clip.audio))
        self._decode(clips)
        for clip in clips:
            results[clip.index] = self._finish(clip)
        return results  # type: ignore[return-value]  # every index was filled above

    def _prepare(self, index: int, path: Path) -> _Clip:
        audio = decode_audio_file(path)
        try:
            spans = self._speech_spans(audio)
        except Exception as exc:  # a VAD failure on one odd file must not stop the others
            raise TranscriptionError(f"voice activity detection failed: {exc}", transient=True) from exc
        language = self.settings.language or (None if self._whisper.model.is_multilingual else "en")
        return _Clip(index, audio, spans, language)

    def _speech_spans(self, audio: np.ndarray) -> list[dict]:
        import torch
        from whisperx.vads import Vad

        vad = self._pipeline.vad_model
        # The same calls FasterWhisperPipeline.transcribe makes, minus loading the file.
        waveform = vad.preprocess_audio(audio) if isinstance(vad, Vad) else torch.from_numpy(audio).unsqueeze(0)
        with torch.inference_mode():
            scores = vad({"waveform": waveform, "sample_rate": SAMPLE_RATE})
        params = self._pipeline._vad_params
        chunks = vad.merge_chunks(scores, WINDOW_SECONDS, onset=params["vad_onset"], offset=params["vad_offset"])
        return [{"start": c["start"], "end": c["end"]} for c in chunks]

    def _decode(self, clips: list[_Clip]) -> None:
        """Every speech chunk of `clips`, batch_size chunks per forward pass whichever file they
        come from, each in its own 30-s window; results go back onto their clip in order."""
        pieces = [(clip, span) for clip in clips for span in clip.spans]
        for batch in _batches(pieces, self.batch_size):
            features = self._features([_window(c.audio, s["start"], s["end"]) for c, s in batch])
            encoded = self._whisper.encode(features)
            self._detect_languages([clip for clip, _ in batch], encoded)
            outputs = self._generate(encoded, [clip.language for clip, _ in batch])
            self.decode_batches += 1
            for (clip, span), output in zip(batch, outputs):
                start, end = round(float(span["start"]), 3), round(float(span["end"]), 3)
                clip.segments.append({"start": start, "end": end, **output})

    def _detect_languages(self, clips: list[_Clip], encoded) -> None:
        """A file's language comes from its first speech chunk, read from the encoder output
        the decoder uses anyway: detection costs no second encoder pass. Chunks come in file
        order, so a file's first chunk is never behind its later ones."""
        if all(clip.language for clip in clips):
            return
        ranked = self._whisper.model.detect_language(encoded)
        self.language_batches += 1
        for clip, languages in zip(clips, ranked):
            if clip.language is None:
                clip.language = languages[0][0][2:-2]  # "<|en|>" → "en"

    def _generate(self, encoded, languages: list[str]) -> list[dict]:
        """Beam search for a batch, each item prompted with its own file's language: files of
        different languages share a batch but never a tokenizer prompt. Same decoding options
        and avg_logprob as WhisperX's generate_segment_batched, which cannot take an encoder
        output or a prompt per item."""
        options = self._pipeline.options
        results = self._whisper.model.generate(
            encoded,
            [self._prompt(language) for language in languages],
            beam_size=options.beam_size,
            patience=options.patience,
            length_penalty=options.length_penalty,
            max_length=self._whisper.max_length,
            suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            repetition_penalty=options.repetition_penalty,
            return_scores=True,
            return_no_speech_prob=True,
        )
        return [self._read_result(result, options) for result in results]

    def _read_result(self, result, options) -> dict:
        tokens = result.sequences_ids[0]
        cumulative = result.scores[0] * (len(tokens) ** options.length_penalty)
        avg_logprob = cumulative / (len(tokens) + 1)
        eot = self._whisper.hf_tokenizer.token_to_id("<|endoftext|>")
        text = self._whisper.hf_tokenizer.decode([t for t in tokens if t < eot]).strip()
        if _looks_invented(result.no_speech_prob, avg_logprob, options):
            text = ""
        return {
            "text": text,
            "avg_logprob": round(float(avg_logprob), 4),
            "no_speech_prob": round(float(result.no_speech_prob), 4),
        }

    def _prompt(self, language: str) -> list[int]:
        options = self._pipeline.options
        tokenizer = self._tokenizer(language)
        previous = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        return self._whisper.get_prompt(
            tokenizer,
            previous,
            without_timestamps=options.without_timestamps,
            prefix=options.prefix,
            hotwords=options.hotwords,
        )

    def _features(self, windows: list[np.ndarray]) -> np.ndarray:
        from whisperx.audio import log_mel_spectrogram

        n_mels = self._whisper.feat_kwargs.get("feature_size") or 80
        mels = [log_mel_spectrogram(w, n_mels=n_mels, padding=WINDOW_SAMPLES - w.shape[0]).numpy() for w in windows]
        return np.stack(mels)

    def _tokenizer(self, language: str):
        from faster_whisper.tokenizer import Tokenizer

        if language not in self._tokenizers:
            model = self._whisper
            self._tokenizers[language] = Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def _finish(self, clip: _Clip) -> Transcript:
        segments = [s for s in clip.segments if s["text"]]
        if self._aligner and segments and clip.language == self._aligner.language:
            segments = self._aligner.align(segments, clip.audio)
        text = " ".join(s["text"] for s in segments)
        return Transcript(text, clip.language, _confidence(segments), segments, _seconds(clip.audio))

    @property
    def _whisper(self):
        return self._pipeline.model


def decode_audio_file(path: Path) -> np.ndarray:
    """16 kHz mono float32 samples, decoded by PyAV: no ffmpeg executable is needed."""
    from faster_whisper.audio import decode_audio

    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except MemoryError:  # the worker's state, not the file's: retried, the row stays
        raise TranscriptionError("out of memory decoding audio", transient=True) from None
    except Exception as exc:  # PyAV raises many types (InvalidDataError, IndexError for no stream)
        raise TranscriptionError(f"cannot decode audio: {exc}") from exc
    if audio.size == 0:
        raise TranscriptionError("cannot decode audio: no samples")
    return audio


class _Aligner:
    """WhisperX word alignment with a local wav2vec2 model (never downloaded)."""

    def __init__(self, model_path: str, language: str, device: str):
        import whisperx

        self.language, self.device = language, device
        self.model, self.metadata = whisperx.load_align_model(
            language, device, model_name=model_path, model_cache_only=True
        )

    def align(self, segments: list[dict], audio: np.ndarray) -> list[dict]:
        import whisperx

        aligned = whisperx.align(segments, self.model, self.metadata, audio, self.device)
        return [
            {**_round_times(s), "text": s["text"].strip(), "words": [_round_times(w) for w in s.get("words", [])]}
            for s in aligned["segments"]
        ]


def load_word_aligner(settings: TranscriberSettings, device: str) -> _Aligner | None:
    """The aligner, or None with the reason logged: alignment is an extra, never a reason to
    fail transcription, and its defaults would download models."""
    if not settings.align:
        return None
    reason = _alignment_unavailable(settings.align_model_path)
    if reason:
        logger.warning("word alignment skipped: %s", reason)
        return None
    return _Aligner(str(settings.align_model_path), settings.language or "en", device)


def _alignment_unavailable(model_path: str | None) -> str | None:
    import nltk

    if not model_path or not Path(model_path).is_dir():
        return f"no local alignment model directory (align_model_path={model_path!r})"
    try:  # whisperx splits sentences with punkt_tab and would otherwise try to download it
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return "nltk data 'punkt_tab' is not installed"
    return None


# GPU memory one more 30-s window in a batch takes, large-v2 in float16: faster-whisper's own
# benchmark measured 4,525 MB at batch 1 and 6,090 MB at batch 8, i.e. ~220 MB per window.
GPU_BYTES_PER_WINDOW = 256 << 20
CPU_BATCH = 8  # on 2 CPU threads a batch of padded windows runs no faster than one at a time
MAX_GPU_BATCH = 32


def whisper_batch_size(setting: int, device: str, free_gpu_bytes: int | None) -> int:
    """Speech windows per forward pass: the setting when given; on CPU 8; on CUDA as many as a
    quarter of the GPU memory left free after loading takes (the rest stays for CoPE-A, which
    the same worker process loads next), up to 32."""
    if setting > 0:
        return setting
    if device != "cuda" or not free_gpu_bytes:
        return CPU_BATCH
    return max(1, min(MAX_GPU_BATCH, free_gpu_bytes // 4 // GPU_BYTES_PER_WINDOW))


def _free_gpu_bytes(device: str) -> int | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.mem_get_info()[0]


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def _load_failure(model: str, resolved: str, exc: Exception) -> str:
    hint = ""
    if not Path(resolved).is_dir():
        hint = (
            " (it is not a local directory, so faster-whisper tried the Hugging Face Hub; offline,"
            " use model='base-bundled', a CTranslate2 directory, or a name under models_root)"
        )
    return f"cannot load Whisper model {model!r}{hint}: {type(exc).__name__}: {exc}"


def _batches(items: list, size: int) -> Iterator[list]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _window(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    # Binarize may overshoot 30 s by a frame; Whisper sees at most one window either way.
    first = int(start * SAMPLE_RATE)
    return audio[first : min(int(end * SAMPLE_RATE), first + WINDOW_SAMPLES)]


def _looks_invented(no_speech_prob: float, avg_logprob: float, options) -> bool:
    """Whisper's own rule (as in faster-whisper's sequential decoder) against text made up for
    non-speech that VAD let through, e.g. music: likely no speech and an unsure decoding."""
    if options.no_speech_threshold is None or options.log_prob_threshold is None:
        return False
    return no_speech_prob > options.no_speech_threshold and avg_logprob < options.log_prob_threshold


def _round_times(item: dict) -> dict:
    keep = {k: v for k, v in item.items() if k in ("word", "text", "start", "end", "score", "avg_logprob")}
    return {k: round(float(v), 3) if isinstance(v, float | np.floating) else v for k, v in keep.items()}


def _confidence(segments: list[dict]) -> float | None:
    if not segments:
        return None
    words = [w["score"] for s in segments for w in s.get("words", []) if "score" in w]
    if words:
        return round(float(np.mean(words)), 4)
    weighted = [(max(s["end"] - s["start"], 1e-3), math.exp(s["avg_logprob"])) for s in segments]
    total = sum(duration for duration, _ in weighted)
    return round(sum(duration * p for duration, p in weighted) / total, 4)


def _seconds(audio: np.ndarray) -> float:
    return round(audio.shape[0] / SAMPLE_RATE, 3)
