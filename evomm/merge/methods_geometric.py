"""More of mergekit 0.1.5's merge methods (see evomm.merge.methods for the conventions).

Each method is a plain function on float32 tensors that reads like its formula, registered
through `SPECS` (added to `evomm.merge.methods.METHODS`), with the per-model parameters the
PS genome may evolve and their bounds in `EVOLVABLE`.
"""

from __future__ import annotations

from evomm.merge.methods import MethodSpec

SPECS: tuple[MethodSpec, ...] = ()
#: method -> {per-model parameter: (lower, upper) bounds that keep the method valid}
EVOLVABLE: dict[str, dict[str, tuple[float, float]]] = {}
