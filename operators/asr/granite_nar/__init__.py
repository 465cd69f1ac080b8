"""Native Granite Speech 4.1 2B-NAR backend (see backend.py). Model code here has no Ray imports."""

try:
    import torch  # noqa: F401
    import safetensors  # noqa: F401
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("the granite-nar backend needs torch, transformers and safetensors: "
                      "pip install 'granite-transcribe[granite]'") from e

from operators.asr.granite_nar.backend import GraniteNarBackend

__all__ = ["GraniteNarBackend"]
