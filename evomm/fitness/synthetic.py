"""Fitness functions with a known answer, for testing the search itself.

`synthetic_target` (PS):

The fitness of a candidate is minus the root-mean-square distance between its merged weights
and a hidden target checkpoint (typically a merge of the same sources with hidden per-layer
coefficients). The optimum is known, so a test can check that the search finds it, and each
evaluation costs one in-memory merge: no data, no forward pass.

    fitness: {metric: synthetic_target, options: {target: path/to/hidden_merge}}

`synthetic_logits` (PS or DFS): minus the RMS distance between the candidate model's logits
and a target model's on fixed random token ids (`options: {target: NAME_OR_PATH}`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from evomm.errors import ConfigError
from evomm.fitness.registry import FitnessContext, register_fitness


class SyntheticTargetEvaluator:
    """-RMSE(merged weights, target weights) over the merged tensors."""

    def __init__(self, target_path: str, compile: bool = False) -> None:
        from evomm.io.sources import open_source

        self._target_source = open_source(target_path)
        self._compile = compile
        self._candidates = None  # built from the first recipe (all candidates share its plan)
        self._target: dict[str, torch.Tensor] = {}

    def evaluate(self, spec: dict[str, Any]) -> float:
        if self._candidates is None:
            from evomm.search.candidates import PSCandidates

            self._candidates = PSCandidates(spec, compile=self._compile)
            for name in self._candidates.merged_names:
                if name not in self._target_source:
                    raise ConfigError(f"synthetic_target: the target checkpoint has no tensor {name}")
                self._target[name] = self._target_source.get(name).to(torch.float32)
            self._target_source.close()
        self._candidates.apply(spec)
        total, count = 0.0, 0
        for name, want in self._target.items():
            got = self._candidates.target[name]
            total += float(torch.sum((got.to(torch.float32) - want) ** 2))
            count += want.numel()
        return -math.sqrt(total / max(count, 1))


@register_fitness("synthetic_target")
def synthetic_target(ctx: FitnessContext) -> SyntheticTargetEvaluator:
    target = ctx.options.get("target")
    if not target:
        raise ConfigError("fitness.options.target: synthetic_target needs the path of the hidden target checkpoint")
    return SyntheticTargetEvaluator(str(target), compile=bool(ctx.options.get("compile", False)))


class SyntheticLogitsEvaluator:
    """-RMSE between a candidate model's logits and a target model's on fixed random tokens.

    Works for PS recipes and DFS specs alike (both become a model through `CandidateModel`),
    which makes it the known-answer fitness for DFS: with a source model as the target, the
    best path is that source's own layers in order, every scale 1.
    """

    def __init__(self, target_path: str, *, tokens: int = 16, batch: int = 2, seed: int = 0) -> None:
        from evomm.search.export import load_decoder_source

        target = load_decoder_source(target_path)
        vocab = target.config.get_text_config(decoder=True).vocab_size
        gen = torch.Generator().manual_seed(seed)
        self._ids = torch.randint(3, max(4, vocab - 8), (batch, tokens), generator=gen)
        with torch.no_grad():
            self._want = target(input_ids=self._ids).logits.float()
        self._vocab = self._want.shape[-1]
        self._candidate = None

    def evaluate(self, spec: dict[str, Any]) -> float:
        from evomm.search.candidates import CandidateModel

        if self._candidate is None:
            self._candidate = CandidateModel(spec)
        model = self._candidate.apply(spec)
        with torch.no_grad():
            got = model(input_ids=self._ids).logits.float()
        n = min(self._vocab, got.shape[-1])  # a LLaVA may carry a few extra vocabulary rows
        return -float(torch.sqrt(torch.mean((got[..., :n] - self._want[..., :n]) ** 2)))


@register_fitness("synthetic_logits")
def synthetic_logits(ctx: FitnessContext) -> SyntheticLogitsEvaluator:
    target = ctx.options.get("target")
    if not target:
        raise ConfigError("fitness.options.target: synthetic_logits needs the path of the target checkpoint")
    target = ctx.sources.get(str(target), str(target))  # a source name or a path
    return SyntheticLogitsEvaluator(
        str(target), tokens=int(ctx.options.get("tokens", 16)), batch=int(ctx.options.get("batch", 2)),
        seed=int(ctx.options.get("seed", ctx.seed)),
    )
