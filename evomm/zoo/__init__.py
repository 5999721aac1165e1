"""The toy zoo: a small world in which EvoVLM-JP's experiment runs on a CPU.

- `evomm.zoo.data`: procedurally drawn scenes with English/Japanese questions (JSONL+PNG);
- `evomm.zoo.score`: key-word accuracy (does an answer name the right content?);
- `evomm.zoo.tokenizer`, `evomm.zoo.train`, `evomm.zoo.build`: the bilingual tokenizer, the
  training stages and the build of base / Japanese LM / English VLM;
- `evomm.zoo.evaluate`: answer the toy VQA sets and score them.
The shipped zoo lives in `assets/zoo` (see docs/toy_zoo.md).
"""

from pathlib import Path

#: the zoo committed with the repository (present in a source checkout)
SHIPPED_ZOO = Path(__file__).resolve().parents[2] / "assets" / "zoo"
