"""Import `matcha` (bundled with upstream CosyVoice) without its training stack.

`cosyvoice.flow.flow_matching` imports `matcha.utils.pylogger`, and the model's feature extractor
is `matcha.utils.audio.mel_spectrogram`. Importing anything under `matcha.utils` runs that
package's `__init__`, which imports hydra, lightning, rich and gdown: none of them is needed to
serve, and together they are hundreds of MB. This module registers `matcha.utils` as a plain
package (its real directory, without running its `__init__`) and `matcha.utils.pylogger` as a
stdlib-logging equivalent. It is the only place the project touches matcha's import machinery.
"""

import importlib.util
import logging
import sys
import types


def install() -> None:
    """Make `matcha.utils.*` importable without matcha's training dependencies. Idempotent."""
    if "matcha.utils.pylogger" in sys.modules:
        return
    import matcha

    if "matcha.utils" not in sys.modules:
        spec = importlib.util.find_spec("matcha.utils")
        package = types.ModuleType("matcha.utils")
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = "matcha.utils"
        sys.modules["matcha.utils"] = package
        matcha.utils = package

    pylogger = types.ModuleType("matcha.utils.pylogger")
    pylogger.get_pylogger = lambda name=__name__: logging.getLogger(name)
    sys.modules["matcha.utils.pylogger"] = pylogger
    sys.modules["matcha.utils"].pylogger = pylogger


install()
