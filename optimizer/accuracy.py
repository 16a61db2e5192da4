"""The accuracy gate: a variant is compared with the unquantized fp32 baseline before it counts.

Two checks on fixed inputs, both run through the variant's own KV cache, window and precision:
- top-1 agreement: the baseline's greedy continuations are fed to the variant token by token
  (teacher forcing, so one early miss does not derail the rest), counting how often the
  variant's argmax is the baseline's next token;
- perplexity on a fixed text, relative to the baseline's.
Defaults: agreement >= 95 % and perplexity at most 2 % higher. A rejected variant is reported,
never recommended."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from optimizer.generate import ensure_caches, generate, left_pad, prefill
from optimizer.model import Transformer

MIN_AGREEMENT = 0.95
MAX_PPL_INCREASE = 0.02

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):\n    ",
    "The three primary colors are",
    "Photosynthesis is the process by which",
    "In 1969, the first person to walk on the Moon was",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
]

EVAL_TEXT = (
    "A graphics processing unit is a specialized electronic circuit designed to accelerate "
    "the creation of images and, increasingly, general computation. Modern GPUs contain "
    "thousands of small cores that execute the same instruction on many pieces of data at once, "
    "which makes them well suited to the matrix multiplications at the heart of neural networks. "
    "Because a large language model must read all of its weights from memory to produce each "
    "new token, the speed of text generation is usually limited by memory bandwidth rather than "
    "by arithmetic. Engineers therefore reduce the number of bytes that must be moved: they store "
    "weights in eight or four bits instead of sixteen, they keep the attention cache compact, and "
    "they group many requests into one batch so that every byte read from memory serves several "
    "users at the same time. Each of these techniques trades a little accuracy or latency for a "
    "large saving in cost, and the trade is only worth making when the answers stay the same."
)


@dataclass
class Reference:
    """The baseline's answers on the fixed inputs, computed once per workload."""

    prompts: list[list[int]]
    continuations: list[list[int]]
    text: list[int]
    perplexity: float


@dataclass
class GateResult:
    agreement: float
    perplexity: float
    baseline_perplexity: float
    ppl_increase: float
    accepted: bool
    reason: str
    min_agreement: float = MIN_AGREEMENT
    max_ppl_increase: float = MAX_PPL_INCREASE

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity(model: Transformer, tokens: list[int]) -> float:
    device = model.rope.device
    ensure_caches(model, 1, len(tokens))
    model.reset_cache_state()
    idx = torch.tensor([tokens], device=device)
    logits = prefill(model, idx, None, all_positions=True)[0, :-1].float()
    return math.exp(F.cross_entropy(logits, idx[0, 1:]).item())


@torch.no_grad()
def forced_agreement(model: Transformer, prompts: list[list[int]], continuations: list[list[int]]) -> float:
    """Share of positions where the variant's argmax is the baseline's next token."""
    device = model.rope.device
    cont = torch.tensor(continuations, device=device)
    idx, real = left_pad(prompts, 0, device)
    ensure_caches(model, len(prompts), idx.shape[1] + cont.shape[1])
    model.reset_cache_state()
    hits = (prefill(model, idx, real).argmax(-1) == cont[:, 0]).sum().item()
    pos = torch.tensor([idx.shape[1]], device=device)
    for i in range(cont.shape[1] - 1):
        logits = model(cont[:, i:i + 1], pos)[:, -1]
        hits += (logits.argmax(-1) == cont[:, i + 1]).sum().item()
        pos += 1
    return hits / cont.numel()


def reference(baseline: Transformer, prompts: list[list[int]], text: list[int],
              new_tokens: int = 32) -> Reference:
    continuations = generate(baseline, prompts, new_tokens).tokens
    return Reference(prompts, continuations, text, perplexity(baseline, text))


def text_workload(tokenizer) -> tuple[list[list[int]], list[int]]:
    """The fixed prompts and evaluation text, tokenized (for a real model)."""
    return [tokenizer.encode(p) for p in PROMPTS], tokenizer.encode(EVAL_TEXT)


def random_workload(baseline: Transformer, n_prompts: int = 8, prompt_len: int = 16,
                    text_len: int = 256, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """For a random-weight model: seeded random prompts, and as the evaluation text a sample
    drawn from the baseline itself at temperature 1 (text the baseline finds plausible)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = baseline.args.vocab_size
    prompts = torch.randint(0, vocab, (n_prompts + 1, prompt_len), generator=gen).tolist()
    text = prompts[-1] + generate(baseline, [prompts[-1]], text_len - prompt_len, temperature=1.0,
                                  seed=seed).tokens[0]
    return prompts[:-1], text


def gate(variant: Transformer, ref: Reference, min_agreement: float = MIN_AGREEMENT,
         max_ppl_increase: float = MAX_PPL_INCREASE) -> GateResult:
    agreement = forced_agreement(variant, ref.prompts, ref.continuations)
    ppl = perplexity(variant, ref.text)
    increase = ppl / ref.perplexity - 1.0
    reasons = []
    if not agreement >= min_agreement:
        reasons.append(f"top-1 agreement {agreement:.1%} < {min_agreement:.0%}")
    if not increase <= max_ppl_increase:
        reasons.append(f"perplexity +{increase:.2%} > +{max_ppl_increase:.0%}")
    return GateResult(agreement=agreement, perplexity=ppl, baseline_perplexity=ref.perplexity,
                      ppl_increase=increase, accepted=not reasons,
                      reason="; ".join(reasons) or "within the gate",
                      min_agreement=min_agreement, max_ppl_increase=max_ppl_increase)
