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
# The benchmark ships apart from the service (its own distribution, not in the service's wheel).
python -m pip install -q -e ./benchmarks
python -c "import cosyvoice, whisper, ray, torch; print('environment ready: torch', torch.__version__, 'ray', ray.__version__)"
