"""The toy EvoLLM-JP world: arithmetic word problems in English and Japanese, and a zoo of a
bilingual base, a Japanese LM and two English math LMs trained on them.

- `evomm.zoo_math.data`: the problems, parallel in both languages, with disjoint splits;
- `evomm.zoo_math.build`: the training stages and the build (`evomm zoo build --world math`);
- `evomm.zoo_math.evaluate`: answer a split with any causal LM and score it (acc, acc_ja).
The shipped zoo lives in `assets/math_zoo` (see docs/toy_math_zoo.md).
"""

from pathlib import Path

#: the math zoo committed with the repository (present in a source checkout)
SHIPPED_MATH_ZOO = Path(__file__).resolve().parents[2] / "assets" / "math_zoo"
