"""Run upstream CosyVoice's own FastAPI server (`runtime/python/fastapi/server.py` of a checkout)
in this project's environment, for `cosyvoice-serve bench --compare-protocol upstream`.

    python -m benchmarks.upstream_server CHECKOUT --port 50000 --model_dir <model dir>

Everything after CHECKOUT goes to the server. The checkout's `cosyvoice` package comes first on
the path (ahead of the older one installed here), and `matcha` is imported without its training
stack (`tts_model.matcha_compat`), as the checkout's `third_party/Matcha-TTS` submodule would
need hydra and lightning. Upstream's loading instantiates its training-only modules as well, so
their imports must be present: modelscope, modelscope_hub, matplotlib (with contourpy, cycler,
fonttools, kiwisolver) and pyworld, e.g. `pip install --target DIR --no-deps ...` and
`PYTHONPATH=DIR`. The server itself runs unchanged.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    checkout = Path(argv[0]).resolve()
    server = checkout / "runtime" / "python" / "fastapi" / "server.py"
    if not server.is_file():
        sys.exit(f"{checkout} is not a CosyVoice checkout: it has no {server.relative_to(checkout)}")
    sys.path.insert(0, str(checkout))
    import tts_model.matcha_compat  # noqa: F401  (before the checkout's modules import matcha)

    sys.argv = [str(server), *argv[1:]]
    runpy.run_path(str(server), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
