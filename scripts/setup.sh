#!/usr/bin/env bash
# Create .venv and install the project with everything it needs, from the package registry alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'
# These two declare dependencies that are wrong for serving (onnxruntime-gpu, modelscope,
# triton...): install them alone; pyproject.toml lists what their modules really import.
python -m pip install -q --no-deps cosyvoice-minicpmo==0.1.0 openai-whisper==20250625
# The playground's browser test drives Debian's chromium through chromedriver: installed here when
# missing, where apt-get exists and this runs as root (CI); elsewhere that one test is skipped.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
# The benchmark ships apart from the service (its own distribution, not in the service's wheel).
python -m pip install -q -e ./benchmarks
python -c "import cosyvoice, whisper, ray, torch; print('environment ready: torch', torch.__version__, 'ray', ray.__version__)"
