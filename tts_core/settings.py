"""The service's one settings object.

Values come, in rising priority, from the defaults here, `COSYVOICE_*` environment variables,
and the `args` of the application in `serve_config.yaml` (which `build_app` receives). The
resolved object is passed to every deployment, so all replicas agree on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Where the default twin is generated, once per machine.
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cosyvoice-serve"

#: OpenAI's voice names, spread over the twin's two pretrained speakers (the lower and the higher voice).
DEFAULT_OPENAI_VOICES = {
    **dict.fromkeys(("alloy", "coral", "nova", "sage", "shimmer", "marin"), "pretrained_voice_002"),
    **dict.fromkeys(("ash", "ballad", "echo", "fable", "onyx", "verse", "cedar"), "pretrained_voice_001"),
}
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

#: A list that an environment variable gives comma-separated (a config gives a YAML list).
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Service settings; every field is also read from `COSYVOICE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="COSYVOICE_", extra="forbid", protected_namespaces=())

    model_dir: str | None = Field(
        None, description="CosyVoice2-0.5B model directory. Unset: a random-weight tiny twin is generated and used.")
    model_cache_dir: str = Field(str(DEFAULT_CACHE_DIR), description="Where the default twin is generated (once).")
    device: str = Field("cpu", description="Torch device of the LLM, flow and vocoder: cpu, cuda, cuda:N or auto.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Precision of the LLM and flow decoder; auto: bf16 where the device runs it natively "
                            "(CUDA, CPUs with AVX512-BF16 or AMX), else fp32.")
    torch_threads: int = Field(
        1, ge=0, description="Torch intra-op threads per model replica; 0: each forward pass takes the cores of the "
                             "node that other replicas' forward passes leave free, the LLM's decoding steps of a few "
                             "sequences one, and the LLM pauses while a stream's first flow chunk runs (faster at "
                             "low load, but results then vary in their last bits with the thread count, so a seed "
                             "no longer gives bit-identical audio).")
    voice_store_uri: str = Field("data/voices", description="pyarrow.fs URI (or local path) of the voice registry.")
    output_store_uri: str = Field("data/audio", description="pyarrow.fs URI (or local path) of synthesized audio.")
    task_store_uri: str = Field("data/tasks", description="pyarrow.fs URI (or local path) of async task records.")
    audio_retention_s: float = Field(3600.0, ge=0, description="Synthesized files are kept at least this long.")
    task_retention_s: float = Field(3600.0, ge=0, description="Finished async tasks are kept at least this long.")
    max_queued_tasks: int = Field(64, ge=1, description="Pending async tasks accepted before submissions get 503.")
    max_running_tasks: int = Field(4, ge=1, description="Async tasks synthesized at the same time.")
    flow_max_batch_size: int = Field(8, ge=1, description="Flow decoder calls batched into one estimator pass "
                                     "(whole utterances and full-attention final chunks; streamed chunks "
                                     "decoded from a stream's kept state go one by one).")
    flow_stream_cache_mb: float | None = Field(
        None, ge=0, description="Memory per flow replica for streams' decoder state, so a streamed chunk costs "
                                "the same however long the utterance; 0 decodes every chunk from the start; unset: "
                                "a quarter of the node's memory.")
    flow_stream_final_chunk: Literal["full", "incremental"] = Field(
        "full", description="How a stream's last flow chunk is decoded: full (over the whole utterance with full "
                            "attention, as upstream does) or incremental (chunk-causally from the stream's kept "
                            "state, like the chunks before it: cheaper, slightly different audio at the end).")
    vocoder_max_batch_size: int = Field(8, ge=1, description="Vocoder calls batched into one HiFT pass.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a flow or vocoder batch waits for more calls; 0 batches only calls "
                               "that queued while the previous batch ran.")
    replica_recovery_timeout_s: float = Field(
        60.0, gt=0, description="How long a request waits for a stage whose replica died to be replaced (it is "
                                "then answered 503); Ray restarts a replica in seconds to tens of seconds, and "
                                "a lost node takes its health-check period on top.")
    app_name: str = Field("cosyvoice", description="Ray Serve application name (prefixes named actors).")
    openai_voices: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_OPENAI_VOICES),
        description="OpenAI voice names -> voice ids (pretrained or registered) for `POST /v1/audio/speech`; "
                    "any other `voice` is taken as a voice id. Environment: a JSON object.")
    api_key_hashes: CommaList = Field(
        default_factory=list, description="Hex SHA-256 of each accepted API key (comma-separated). With these or "
                                          "`api_key_file` set, every route but /health needs a key.")
    api_key_file: str | None = Field(None, description="A file of hex SHA-256 API key hashes, one a line (`#` "
                                                       "comments), read when the ingress starts.")
    cors_origins: CommaList = Field(default_factory=list, description="Origins browsers may call the API from "
                                                                      "(comma-separated; `*` for any). Empty: none.")

    @field_validator("api_key_hashes", "cors_origins", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value

    @field_validator("api_key_hashes")
    @classmethod
    def check_hashes(cls, hashes: list[str]) -> list[str]:
        hashes = [value.lower() for value in hashes]
        if bad := [value for value in hashes if not SHA256_HEX.fullmatch(value)]:
            raise ValueError(f"api_key_hashes must be hex SHA-256 digests (64 hex digits); {len(bad)} are not")
        return hashes

    def resolved(self) -> Settings:
        """Local paths made absolute here, where they were given, since replicas and actors may
        run in other working directories."""
        def absolute(uri: str) -> str:
            return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))

        return self.model_copy(update={
            "voice_store_uri": absolute(self.voice_store_uri), "output_store_uri": absolute(self.output_store_uri),
            "task_store_uri": absolute(self.task_store_uri),
            "api_key_file": os.path.abspath(os.path.expanduser(self.api_key_file)) if self.api_key_file else None,
            "model_dir": os.path.abspath(os.path.expanduser(self.model_dir)) if self.model_dir else None,
            "model_cache_dir": os.path.abspath(os.path.expanduser(self.model_cache_dir))})
