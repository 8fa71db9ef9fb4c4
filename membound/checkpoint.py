"""What the CLI's MODEL argument names: a built-in model (``llama-tiny``) or a local Hugging Face
checkpoint folder (``config.json``, ``*.safetensors`` or ``*.bin``, tokenizer files). Nothing is downloaded.

    model, tokenizer = load_checkpoint("path/to/llama", dtype=torch.bfloat16, device="cuda")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch


class ModelNotFound(ValueError):
    """The MODEL argument is neither a built-in model nor a checkpoint folder; the message says what exists."""


def is_checkpoint(spec: str) -> bool:
    return (Path(spec) / "config.json").is_file()


def _not_found(spec: str) -> ModelNotFound:
    from membound.models import list_models

    path = Path(spec)
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir())[:8]
        return ModelNotFound(f"{spec!r} is a folder without config.json (it has: {', '.join(files) or 'nothing'}); "
                             f"a Hugging Face checkpoint folder holds config.json, *.safetensors and tokenizer files")
    return ModelNotFound(f"no model {spec!r}: not a folder, and not a built-in model ({', '.join(list_models())})")


def resolve(spec: str) -> str:
    """``"builtin"`` or ``"checkpoint"`` for a MODEL argument; :class:`ModelNotFound` otherwise."""
    from membound.models import list_models

    if is_checkpoint(spec):
        return "checkpoint"
    if spec in list_models():
        return "builtin"
    raise _not_found(spec)


def load_checkpoint(folder: str, *, dtype: Optional[torch.dtype] = None, device: str = "cpu",
                    tokenizer: bool = True) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a local folder (``local_files_only``: nothing is downloaded)."""
    if not is_checkpoint(folder):
        if Path(folder).is_dir():
            raise _not_found(folder)
        raise ModelNotFound(f"no checkpoint folder {folder!r}: give a local Hugging Face folder with config.json, "
                            f"*.safetensors and tokenizer files (save_pretrained writes one)")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelNotFound("loading a checkpoint folder needs transformers: pip install transformers") from e
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or "auto")
    model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True) if tokenizer else None
    return model, tok


def meta_model(spec: str, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.nn.Module, int, str]:
    """The model named by ``spec`` on the meta device (types only, no memory): model, vocab size, name."""
    kind = resolve(spec)
    if kind == "builtin":
        from membound.models import get_config, model_from_config

        config = get_config(spec)
        with torch.device("meta"):
            model = model_from_config(config).to(dtype).eval()
        return model, config.vocab_size, spec
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(spec, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return model, config.vocab_size, Path(spec).resolve().name
