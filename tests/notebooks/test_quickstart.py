"""`notebooks/quickstart.ipynb` runs top to bottom against the session's running app."""

from __future__ import annotations

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def audio_outputs(nb) -> list[str]:
    """The `text/html` outputs that embed an `<audio>` player (what `IPython.display.Audio` renders)."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html", "")
            if isinstance(html, list):
                html = "".join(html)
            if "<audio" in html:
                found.append(html)
    return found


def test_quickstart_runs_top_to_bottom(serve_cluster, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit the notebook with its outputs cleared"

    # The kernel is a child process: it inherits this environment (the service address) and runs in
    # a scratch folder, so the generated voice sample never lands in the repository.
    monkeypatch.setenv("COSYVOICE_URL", serve_cluster["base_url"])
    # In a virtualenv this is jupyter_core's default already: the env's own `python3` kernelspec
    # (installed by ipykernel, started with this interpreter) wins over any user-level one.
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180, startup_timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")  # kept for inspection

    errors = [output for cell in nb.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors
    assert (tmp_path / "my_voice_sample.wav").is_file()
    # `IPython.display.Audio` players were displayed (the sample, every mode, the stream, the async result).
    assert len(audio_outputs(nb)) >= 1
