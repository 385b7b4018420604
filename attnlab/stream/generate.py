"""Streaming generation: turn after turn, one stream, memory bounded by the cache policy.

Each turn's prompt is appended to the same stream (a prompt longer than the cache is fine: it is fed in
steps whose visibility matches token-by-token feeding), then tokens are decoded one at a time, greedy by
default or sampled with a seeded generator, until `max_new_tokens` or the end-of-sequence token (which,
like a reply's last token, is fed at the start of the next turn). With `chat=True` each turn is wrapped in the
tokenizer's chat template. What
StreamingLLM gives is endless fluent text with constant memory; it does not extend the context: text that
has left the window (except the sinks) is forgotten.

Choosing a token, in the order Hugging Face's `generate` applies the same settings: the repetition penalty
(CTRL, Keskar et al. 2019: a logit z of a token already in this turn's prompt or reply becomes z / p if
z > 0, else z * p; p > 1 discourages repeats, 1 is off; it applies to greedy decoding too), then greedy
argmax, or temperature, top-k, and top-p (nucleus sampling, Holtzman et al. 2020: sample from the smallest
set of most likely tokens whose probability adds up to at least p; 1 is off).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.errors import ConfigError, DataError, ModelError
from attnlab.stream.policies import Policy
from attnlab.stream.runner import StreamRunner


@dataclass
class TurnStats:
    prompt_tokens: int
    new_tokens: int
    seconds: float
    cache_bytes: int
    stream_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


MAX_SEED = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes


def check_sampling(*, max_new_tokens: int, temperature: float, top_k: int | None, seed: int,
                   top_p: float = 1.0, repetition_penalty: float = 1.0) -> None:
    """Raise ConfigError (naming the flag and the allowed range) for settings that generation would
    reject with a torch error, or worse, accept: a NaN temperature samples garbage."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens (--max-new-tokens) must be an integer >= 1, "
                          f"got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature (--temperature) must be a finite number >= 0 (0 = greedy), "
                          f"got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ConfigError(f"top_k (--top-k) must be an integer >= 1, or 0 for no top-k cut, got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"top_p (--top-p) must be a number in (0, 1] (1 = no nucleus cut), got {top_p!r}")
    if isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, (int, float)) \
            or not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise ConfigError(f"repetition_penalty (--repetition-penalty) must be a finite number > 0 (1 = off, "
                          f"above 1 discourages repeats, e.g. 1.2), got {repetition_penalty!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed (--seed) must be an integer in [0, 2**64 - 1], got {seed!r}")


class StreamGenerator:
    """Holds one stream across turns: `turn(prompt)` yields text pieces as tokens are produced."""

    def __init__(self, lm: Any, policy: Policy, *, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0, prefill_step: int = 256,
                 chat: bool = False, top_p: float = 1.0, repetition_penalty: float = 1.0) -> None:
        if not hasattr(lm, "encode") or not hasattr(lm, "tokenizer"):
            raise TypeError("StreamGenerator needs a LoadedModel (attnlab.load_model) with a tokenizer")
        check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                       top_p=top_p, repetition_penalty=repetition_penalty)
        self.lm = lm
        self.chat = chat
        self.runner = StreamRunner(lm, policy, max_step=prefill_step)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = float(top_p)
        self.repetition_penalty = float(repetition_penalty)
        self.gen = torch.Generator().manual_seed(seed)
        self.eos = getattr(lm.tokenizer, "eos_id", None)
        self.stats: list[TurnStats] = []
        self._pending: Tensor | None = None  # last sampled token, not yet fed
        self.reply_ids: list[int] = []  # token ids of the last reply

    def format(self, prompt: str) -> str:
        """The turn as the model expects it: the tokenizer's chat template when `chat`, else as is."""
        if not self.chat:
            return prompt
        hf = getattr(self.lm.tokenizer, "hf", None)
        if hf is None or not getattr(hf, "chat_template", None):
            raise ConfigError(f"{self.lm.name}'s tokenizer has no chat template; turn chat formatting off")
        return hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                      add_generation_prompt=True)

    def scores(self, logits: Tensor, seen: Tensor | None = None) -> Tensor:
        """The scores (V,) a token is chosen from: logits (V,) after the repetition penalty over `seen`
        (N,) ids, then (when sampling) temperature, top-k and top-p, -inf where a token is cut."""
        scores = logits.double()  # (V,)
        if self.repetition_penalty != 1.0 and seen is not None and seen.numel():
            ids = seen.to(scores.device).unique()
            z = scores[ids]
            scores = scores.index_copy(0, ids, torch.where(z > 0, z / self.repetition_penalty,
                                                             z * self.repetition_penalty))
        if self.temperature == 0:
            return scores
        scores = scores / self.temperature
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            probs, order = torch.softmax(scores, -1).sort(descending=True)  # (V,) each
            before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
            drop = order[before >= self.top_p]  # the most likely token always stays (before = 0)
            scores = scores.index_fill(0, drop, float("-inf"))
        return scores

    def _pick(self, logits: Tensor, seen: Tensor | None = None) -> int:
        if bool(torch.isnan(logits).any()) or not bool((logits > float("-inf")).any()):
            # argmax of NaN scores is token 0 (a NUL byte for byte tokenizers): printed, it passes for output
            raise ModelError(f"{getattr(self.lm, 'name', 'the model')} gave NaN (or no finite) next-token "
                             f"scores: it has a non-finite weight or activation; check the model's "
                             f"weights (a NaN or inf, or values that overflow in this dtype)")
        scores = self.scores(logits, seen)
        if self.temperature == 0:
            return int(scores.argmax())
        return int(torch.multinomial(torch.softmax(scores, -1).cpu(), 1, generator=self.gen))

    def turn(self, prompt: str) -> Iterator[str]:
        """Feed `prompt` and yield decoded text pieces of the reply."""
        if not prompt:
            raise DataError("empty prompt: type some text (or end the input to stop)")
        ids = self.lm.encode(self.format(prompt))
        if self._pending is not None:
            ids = torch.cat([self._pending.to(ids.device), ids], dim=1)
            self._pending = None
        start = time.perf_counter()
        logits = self.runner.feed(ids, last_only=True)[0, -1]
        out: list[int] = []
        emitted = ""
        for _ in range(self.max_new_tokens):
            seen = torch.cat([ids[0].cpu(), torch.tensor(out, dtype=torch.long)])  # this turn's tokens
            tok = self._pick(logits, seen)
            if self.eos is not None and tok == self.eos:
                self._pending = torch.tensor([[tok]])  # end of turn: fed with the next turn
                break
            out.append(tok)
            # Decode the whole reply each time and hold back a trailing replacement character, so a
            # character split over several tokens comes out whole.
            text = self.lm.decode(out)
            if text.startswith(emitted) and not text.endswith("\ufffd"):
                yield text[len(emitted):]
                emitted = text
            if len(out) == self.max_new_tokens:
                self._pending = torch.tensor([[tok]])  # fed with the next turn, so the stream stays whole
                break
            logits = self.runner.feed(torch.tensor([[tok]], device=ids.device), last_only=True)[0, -1]
        text = self.lm.decode(out)
        if text != emitted and text.startswith(emitted):
            yield text[len(emitted):]
        self.reply_ids = out
        self.stats.append(TurnStats(prompt_tokens=int(ids.shape[1]), new_tokens=len(out),
                                    seconds=time.perf_counter() - start,
                                    cache_bytes=self.runner.cache_bytes(),
                                    stream_tokens=self.runner.tokens_seen))


def stream_generate(lm: Any, policy: Policy, prompts: Iterable[str], *, write: Callable[[str], Any],
                    max_new_tokens: int = 128, temperature: float = 0.0, top_k: int | None = None,
                    seed: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0) -> list[TurnStats]:
    """Run `prompts` turn after turn through one stream, writing text pieces with `write` as they come."""
    gen = StreamGenerator(lm, policy, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          seed=seed, top_p=top_p, repetition_penalty=repetition_penalty)
    for prompt in prompts:
        for piece in gen.turn(prompt):
            write(piece)
        write("\n")
    return gen.stats
