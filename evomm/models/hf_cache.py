"""Which keyword a transformers callable or output class uses for the key/value cache.

transformers renamed the cache argument of its decoder layers, models, mask builders and
output classes from `past_key_values` to `cache` (5.24), keeping the old name only behind a
deprecation shim that prefers the new one. A caller that hard-codes either name breaks
silently on the other side of the rename: the cache it passes falls into `**kwargs` and the
layer makes or uses another. evomm reads the name off the documented signature instead, and
refuses loudly when neither name is there.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable

from evomm.errors import DFSError

# newest first: the name transformers uses today, then the older ones
CACHE_NAMES = ("cache", "past_key_values", "past_key_value")


@functools.lru_cache(maxsize=None)
def _parameters(fn: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def cache_keyword(fn: Callable) -> str:
    """The name under which `fn` (a decoder layer's `forward`, a mask builder) takes the cache."""
    target = getattr(fn, "__func__", fn)  # bound methods: cache per function, not per instance
    params = _parameters(target)
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise DFSError(f"{getattr(target, '__qualname__', target)!r} takes none of {CACHE_NAMES} "
                   "as its cache argument: this transformers release passes the cache differently")


def output_cache_field(output_cls: type) -> str:
    """The field of a transformers output dataclass (e.g. `BaseModelOutputWithPast`) holding the cache."""
    fields = {f.name for f in dataclasses.fields(output_cls)}
    for name in CACHE_NAMES:
        if name in fields:
            return name
    raise DFSError(f"{output_cls.__name__} has none of {CACHE_NAMES} as a field")
