"""Run upstream CosyVoice's own FastAPI server (`runtime/python/fastapi/server.py` of a checkout)
in this project's environment, for `cosyvoice-serve bench --compare-protocol upstream`.

    python -m benchmarks.upstream_server CHECKOUT --port 50000 --model_dir <model dir>

Everything after CHECKOUT goes to the server. The checkout's `cosyvoice` package comes first on
the path (ahead of the older one installed here), and `matcha` is imported without its training
stack (`tts_model.matcha_compat`), as the checkout's `third_party/Matcha-TTS` submodule would
need hydra and lightning. Upstream's loading instantiates its training-only modules as well, so
their imports must be present: modelscope, modelscope_hub, matplotlib (with contourpy, cycler,
fonttools, kiwisolver) and pyworld, e.g. `pip install --target DIR --no-deps ...` and
`PYTHONPATH=DIR`. Upstream reads uploaded prompts with `torchaudio.load(..., backend="soundfile")`;
torchaudio 2.9 and later ignore the backend and read through torchcodec and FFmpeg, which are not
installed here, so where torchcodec is missing `torchaudio.load` reads with soundfile as asked.
And at ace7c47 the server decodes an uploaded prompt to 16 kHz samples, then hands those to a
front end that expects the file and decodes it again (upstream issue #1794, "Invalid file:
tensor"): `load_wav` here also takes such samples as 16 kHz audio, so that zero-shot requests
run (for a 16 kHz upload, with the very features of the file). The server itself runs unchanged.
"""

from __future__ import annotations

import functools
import importlib.util
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The rate the server decodes uploaded prompts to.
PROMPT_RATE = 16000


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    checkout = Path(argv[0]).resolve()
    server = checkout / "runtime" / "python" / "fastapi" / "server.py"
    if not server.is_file():
        sys.exit(f"{checkout} is not a CosyVoice checkout: it has no {server.relative_to(checkout)}")
    sys.path.insert(0, str(checkout))
    import tts_model.matcha_compat  # noqa: F401  (before the checkout's modules import matcha)

    if importlib.util.find_spec("torchcodec") is None:
        import torchaudio

        torchaudio.load = load_with_soundfile
    from cosyvoice.utils import file_utils

    file_utils.load_wav = functools.partial(load_wav_or_samples, file_utils.load_wav)

    sys.argv = [str(server), *argv[1:]]
    runpy.run_path(str(server), run_name="__main__")


def load_wav_or_samples(load_wav: Callable[..., Any], wav: Any, target_sr: int, *args: Any, **kwargs: Any) -> Any:
    """Upstream's `load_wav`, which also takes samples the server decoded already (at 16 kHz)."""
    import torch
    import torchaudio

    if not isinstance(wav, torch.Tensor):
        return load_wav(wav, target_sr, *args, **kwargs)
    if target_sr == PROMPT_RATE:
        return wav
    return torchaudio.transforms.Resample(orig_freq=PROMPT_RATE, new_freq=target_sr)(wav)


def load_with_soundfile(source: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """`torchaudio.load`'s result, [channels, frames] float32 and the rate, read by soundfile."""
    import soundfile
    import torch

    samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy()), rate


if __name__ == "__main__":
    main(sys.argv[1:])
