"""WhisperX behind a ConfigurableResource; the model itself is cached per worker process."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from models.transcriber import Transcriber, TranscriberSettings, load_transcriber, transcript_model_name


class WhisperTranscriber(dg.ConfigurableResource):
    """Speech to text with WhisperX (faster-whisper/CTranslate2 + pyannote VAD)."""

    model: str = Field(default="large-v2", description="Model name, 'base-bundled', or a local CTranslate2 dir")
    models_root: str | None = Field(default=None, description="Where named models and assembled ones live")
    device: str = Field(default="auto", description="auto | cpu | cuda")
    compute_type: str = Field(default="auto", description="auto: float16 on GPU, int8 on CPU")
    batch_size: int = Field(
        default=0, description="Speech segments per forward pass, across files; 0 = 8 on CPU, from free memory on CUDA"
    )
    language: str | None = Field(default=None, description="Fixed language code, or None to detect per file")
    threads: int = Field(default=0, description="CPU threads; 0 = all cores")
    align: bool = Field(default=False, description="Word alignment (needs a local alignment model)")
    align_model_path: str | None = None

    def settings(self) -> TranscriberSettings:
        return TranscriberSettings(
            model=self.model,
            models_root=str(Path(self.models_root).expanduser()) if self.models_root else None,
            device=self.device,
            compute_type=self.compute_type,
            batch_size=self.batch_size,
            language=self.language,
            threads=self.threads,
            align=self.align,
            align_model_path=self.align_model_path,
        )

    def load(self) -> Transcriber:
        """The process-wide model for these settings: loaded on first use, then reused."""
        return load_transcriber(self.settings())

    def model_name(self) -> str:
        """The name transcripts of these settings are stored under, without loading the model."""
        return transcript_model_name(self.settings())
