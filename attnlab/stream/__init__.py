"""attnlab.stream: constant-memory inference over unbounded text (StreamingLLM and friends).

Policies (`make_policy`, `parse_policy`), one registry (`register_policy`, `policy_names`): full, window(W),
sinks(S, W), chunked(C), recompute(W), memory (attnlab GPT), and any a user registers or names "module:Attr".
`StreamRunner(model, policy).feed(ids)` gives token-by-token-exact logits with memory bounded by the
policy; `stream_eval` measures streaming perplexity; `stream_generate` streams text;
`StreamingCache(model, policy)` is a drop-in cache for Hugging Face `model.generate`; `RunnerCache` (formerly
`StreamCache`, still importable with a DeprecationWarning) is the cache StreamRunner drives. See
docs/streaming.md.
"""

from attnlab.stream.cache import RunnerCache
from attnlab.stream.hf_cache import StreamingCache
from attnlab.stream.policies import (
    ChunkedPolicy,
    FullPolicy,
    MemoryPolicy,
    Policy,
    RecomputePolicy,
    SinksPolicy,
    WindowPolicy,
)
from attnlab.stream.registry import (
    POLICIES,
    make_policy,
    parse_policy,
    policy_names,
    register_policy,
    unregister_policy,
)
from attnlab.stream.runner import StreamRunner

__all__ = [
    "POLICIES", "ChunkedPolicy", "FullPolicy", "MemoryPolicy", "Policy", "RecomputePolicy", "SinksPolicy",
    "RunnerCache", "StreamRunner", "StreamingCache", "WindowPolicy", "make_policy", "parse_policy",
    "policy_names", "register_policy", "unregister_policy",
]


def __getattr__(name: str) -> object:
    if name == "StreamCache":  # deprecated alias of RunnerCache (warns; see attnlab.stream.cache)
        from attnlab.stream import cache

        return cache.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
