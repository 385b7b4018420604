"""Saved retrofits as first-class transformers models: `AutoModelForCausalLM.from_pretrained(dir)` loads a
folder saved after `attnlab.retrofit` as the same model (normalizer, span, gates, learned tensors), or fails
naming attnlab; it never loads silently as the un-retrofitted base model.

How: `retrofit` gives the model's config a subclass of its own config class whose `model_type` is
`attnlab_retrofit_<base>` (e.g. `attnlab_retrofit_llama`), so `save_pretrained` writes that type into
config.json. attnlab registers the type with `AutoConfig.register` and a matching subclass of the base causal
LM class (`AttnlabRetrofitLlamaForCausalLM(LlamaForCausalLM)`) with `AutoModelForCausalLM.register`; that
class's `__init__` applies the recorded retrofit, so transformers creates the learned tensors before it loads
the weights and checks them like any other key (none missing, none unexpected).

Why registration and not `auto_map` (custom code copied into every folder): it needs no code execution
(`trust_remote_code`), no network and no copied module that can go stale, and the folder stays plain
config + safetensors. The cost: the type must be registered in the process (`attnlab.retrofit` and
`attnlab.load_model` register the architecture they handle, `register()` every supported one); a process
without it gets transformers' "model type `attnlab_retrofit_llama` ... does not recognize this
architecture", which names attnlab, rather than a different model. `import attnlab` alone does not register
(it stays lazy so `attnlab --help` is fast).

Folders saved by attnlab before this (base `model_type` plus an `attnlab_retrofit` record) still load with
`attnlab.load_model`, with a warning; `upgrade_folder(dir)` rewrites their config.json in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from attnlab.errors import AttnlabError, ConfigError, ModelNotFoundError

PREFIX = "attnlab_retrofit_"
_CLASS_PREFIX = "AttnlabRetrofit"
RECORD_KEY = "attnlab_retrofit"  # the config.json key (retrofit.py re-exports it)

_classes: dict[str, tuple[type, type]] = {}  # base model_type -> (native config class, native model class)


def native_model_type(base_type: str) -> str:
    """The model_type a retrofitted `base_type` model is saved under ("llama" -> "attnlab_retrofit_llama")."""
    return PREFIX + base_type


def base_model_type(model_type: str) -> str | None:
    """The base architecture of a native retrofit model_type, None for any other type."""
    return model_type[len(PREFIX):] if isinstance(model_type, str) and model_type.startswith(PREFIX) else None


def native_classes(base_type: str) -> tuple[type, type]:
    """(config class, causal LM class) for retrofitted `base_type` models, created and registered once."""
    if base_type in _classes:
        return _classes[base_type]
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if base_type not in CONFIG_MAPPING:
        raise AttnlabError(f"a retrofit of model_type {base_type!r}, which this transformers does not know; "
                           f"install the transformers version that saved it")
    base_config = CONFIG_MAPPING[base_type]
    if base_config not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise AttnlabError(f"{base_type!r} is not a causal language model architecture, so it has no "
                           f"retrofit")
    base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base_config]
    stem = "".join(part.capitalize() for part in base_type.replace("-", "_").split("_"))

    def to_dict(self: Any) -> dict[str, Any]:
        # Tools that pick a class by `architectures` (vLLM's registry) must not find the plain base class.
        out = base_config.to_dict(self)
        if out.get("architectures"):
            out["architectures"] = [a if a.startswith(_CLASS_PREFIX) else _CLASS_PREFIX + a
                                    for a in out["architectures"]]
        return out

    config_cls = type(f"{_CLASS_PREFIX}{stem}Config", (base_config,), {
        "model_type": native_model_type(base_type), "__module__": __name__, "to_dict": to_dict,
        "__doc__": f"{base_config.__name__} of a model retrofitted by attnlab (config.{RECORD_KEY})."})

    def __init__(self: nn.Module, config: Any, *args: Any, **kwargs: Any) -> None:
        base_model.__init__(self, config, *args, **kwargs)
        _apply_record(self, config)

    def _initialize_missing_keys(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        base_model._initialize_missing_keys(self, *args, **kwargs)
        _init_missing_retrofit_tensors(self)

    model_cls = type(f"{_CLASS_PREFIX}{base_model.__name__}", (base_model,), {
        "config_class": config_cls, "__init__": __init__,
        "_initialize_missing_keys": _initialize_missing_keys,
        "__module__": __name__,
        "__doc__": f"{base_model.__name__} with the attnlab retrofit its config records, applied at init."})
    globals()[config_cls.__name__] = config_cls  # importable by name (pickle, copy)
    globals()[model_cls.__name__] = model_cls
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _share_weight_renames(base_type, native_model_type(base_type))
    _share_weight_renames(base_model.__name__, model_cls.__name__)
    _classes[base_type] = (config_cls, model_cls)
    return config_cls, model_cls


def _share_weight_renames(base: str, native: str) -> None:
    """transformers renames checkpoint keys by class name or model_type on load, and back on save
    (GPT-NeoX's `embed_out` is `lm_head` in memory); the retrofit class and type rename as their base does."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:  # a transformers without key conversions has nothing to share
        return
    renames = get_checkpoint_conversion_mapping(base)
    if renames is not None:
        register_checkpoint_conversion_mapping(native, renames, overwrite=True)


def register() -> None:
    """Register the retrofit model types of every supported architecture with transformers' Auto classes
    (idempotent), so plain `AutoModelForCausalLM.from_pretrained(dir)` loads saved retrofits."""
    from attnlab.models.hf import SUPPORTED_ARCHITECTURES

    for arch in SUPPORTED_ARCHITECTURES:
        native_classes(arch)


def mark_native(model: nn.Module) -> None:
    """Give a just-retrofitted model's config its native class, so `save_pretrained` writes the retrofit's
    model_type. The model keeps its own class."""
    config = model.config
    base = base_model_type(config.model_type) or config.model_type
    config.__class__ = native_classes(base)[0]


def record_arguments(where: str, record: object) -> dict[str, Any]:
    """The `retrofit` keyword arguments a config's record asks for (validated, one line when bad)."""
    from attnlab.models.retrofit import RECORD_VERSION

    if record is None:
        raise ConfigError(f"{where} needs its '{RECORD_KEY}' record, which says which attnlab attention to "
                          f"build; restore it in config.json (e.g. from the run that saved it)")
    if not isinstance(record, dict) or not isinstance(record.get("normalizer"), str):
        raise ConfigError(f"{where}: '{RECORD_KEY}' must be an object with at least a 'normalizer' name, "
                          f"got {record!r}"[:300])
    version = record.get("version", RECORD_VERSION)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise ConfigError(f"{where}: retrofit record version {version!r} is newer than this attnlab reads "
                          f"({RECORD_VERSION}); upgrade attnlab")
    return {"normalizer": record["normalizer"], "gated": record.get("gated", False),
            "span": record.get("span"), "options": record.get("options") or {}}


def _apply_record(self: nn.Module, config: Any) -> None:
    from attnlab.models.retrofit import retrofit

    where = f"the config of this {config.model_type!r} model"
    retrofit(self, **record_arguments(where, getattr(config, RECORD_KEY, None)))


def _init_missing_retrofit_tensors(model: nn.Module) -> None:
    """After a partial load: retrofit tensors the checkpoint lacked start where `retrofit` starts them (gates
    open, sinks at SINK_INIT). HF's own init never reaches them (they sit inside the base model, whose
    `_init_weights` knows only its own layers), so they would otherwise keep uninitialised memory. Loaded
    tensors carry transformers' `_is_hf_initialized` flag and are left alone."""
    import torch

    from attnlab.models.retrofit import RetrofitState, initial_learned

    for state in (m for m in model.modules() if isinstance(m, RetrofitState)):
        init = initial_learned(state.normalizer_name, model.config.num_attention_heads, None)
        fresh = {**{f"learned.{k}": v for k, v in init.items()},
                 **({} if state.gate is None else {"gate.weight": None, "gate.bias": None})}
        for name, p in state.named_parameters():
            if getattr(p, "_is_hf_initialized", False) or name not in fresh:
                continue
            with torch.no_grad():
                value = fresh[name]
                p.copy_(torch.zeros_like(p) if value is None else value.to(p.dtype))


def __getattr__(name: str) -> Any:
    # The classes are made on first use; a process that unpickles a retrofitted config finds them here.
    if name.startswith(_CLASS_PREFIX):
        register()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- folders saved by an older attnlab --------------------------------------------------------------------
def is_legacy(config: dict[str, Any]) -> bool:
    """A config.json written before retrofits had their own model_type (a base type plus the record)."""
    return RECORD_KEY in config and base_model_type(str(config.get("model_type"))) is None


def upgrade_folder(path: str | Path) -> Path:
    """Rewrite an older attnlab retrofit folder's config.json (base model_type + record) to the native
    model_type, so plain transformers loads it as the retrofit; the weights are untouched. Returns the
    config file."""
    from attnlab.io import atomic_write_text

    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read {file} ({exc}); point at a folder saved after "
                                 f"attnlab.retrofit") from exc
    if not isinstance(config, dict) or RECORD_KEY not in config:
        raise ConfigError(f"{file} has no '{RECORD_KEY}' record, so it is not an attnlab retrofit folder")
    if is_legacy(config):
        config["model_type"] = native_model_type(str(config.get("model_type")))
        atomic_write_text(file, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return file


__all__ = ["PREFIX", "base_model_type", "is_legacy", "mark_native", "native_classes", "native_model_type",
           "record_arguments", "register", "upgrade_folder"]
