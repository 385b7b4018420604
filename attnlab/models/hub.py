"""Model names: attnlab's aliases and Hugging Face hub ids found offline in the local hub cache.

A hub id ("gpt2", "org/name") is found the way `from_pretrained(id, local_files_only=True)` finds it: the
cache is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub; the id's folder
`models--org--name` holds `refs/main` (a commit hash) and `snapshots/<commit>/`. Nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from attnlab.errors import ModelNotFoundError

SMOLLM2 = "smollm2-135m"
ALIASES = {"smollm2": SMOLLM2, "smollm2-135m": SMOLLM2, "smollm2-135m-instruct": SMOLLM2}
SUPPORTED = ("'smollm2-135m' (alias 'smollm2'), a Hugging Face model folder (config.json + safetensors), "
             "a .gguf file, an attnlab checkpoint folder (config.json + model.safetensors), or a Hugging "
             "Face hub id ('gpt2', 'org/name') already in the local Hugging Face cache")
# What huggingface_hub accepts as a repo id: "name" or "namespace/name", no "--" or ".." inside.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def is_hub_id(name: object) -> bool:
    """True for a string shaped like a hub repo id ("gpt2", "org/name"), not like a path or a .gguf file."""
    return (isinstance(name, str) and bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name
            and not name.lower().endswith(".gguf"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (as huggingface_hub does at import):
    $HF_HUB_CACHE (or the older $HUGGINGFACE_HUB_CACHE), else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hub_snapshot(repo_id: str, revision: str = "main") -> Path:
    """The snapshot folder of `repo_id` in the local hub cache (offline; nothing is downloaded)."""
    cache = hub_cache_dir()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    fix = (f"download it once where there is network (`hf download {repo_id}`, or from_pretrained) into this "
           f"cache, set HF_HUB_CACHE or HF_HOME to the cache that holds it, or pass the model's folder")
    if not repo.is_dir():
        raise ModelNotFoundError(f"no model named or at {repo_id!r}: no such file or folder, and the Hugging "
                                 f"Face cache {cache} has no {repo.name} ({fix}); known names: "
                                 f"{', '.join(sorted(ALIASES))}. Supported: {SUPPORTED}")
    ref = repo / "refs" / revision
    snapshots = repo / "snapshots"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        snapshot = snapshots / commit
        if not snapshot.is_dir():
            raise ModelNotFoundError(f"{ref} names commit {commit[:12]}, but {snapshot} is missing (an "
                                     f"interrupted download?); {fix}")
        return snapshot
    found = sorted(d for d in snapshots.iterdir() if d.is_dir()) if snapshots.is_dir() else []
    if len(found) == 1:  # a hand-copied cache without refs: its only snapshot is unambiguous
        return found[0]
    raise ModelNotFoundError(f"{repo} has no refs/{revision} and {len(found)} snapshots, so which one is "
                             f"{revision!r} is unknown; {fix}")


__all__ = ["ALIASES", "SMOLLM2", "SUPPORTED", "hub_cache_dir", "hub_snapshot", "is_hub_id"]
