"""Fitness functions: the stage between a candidate model and the search (genome → candidate →
fitness → search). One module per fitness; `registry` looks them up by name.

- `vqa_rouge_ja`     Japanese ROUGE-L of a VLM's answers (EvoVLM-JP)
- `math_accuracy_ja` accuracy on Japanese math word problems (EvoLLM-JP)
- `lm_eval`          weighted lm-evaluation-harness tasks on the in-memory candidate
- `sdxl_clip_score`  CLIP image-prompt score of a merged SDXL UNet (EvoSDXL-JP)
- `synthetic_*`      cheap weight-space targets for tests and benchmarks
"""

from evomm.fitness.registry import FitnessContext, build_evaluator, get_fitness, register_fitness

__all__ = ["FitnessContext", "build_evaluator", "get_fitness", "register_fitness"]
