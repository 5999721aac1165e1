"""What an architecture adapter is: tensor name <-> slot, and the layer groups a recipe sees.

A slot names a tensor's meaning independently of how one checkpoint spells it:
`Slot("text", 3, "self_attn.q_proj.weight")` is the same thing in a Mistral checkpoint
(`model.layers.3.self_attn.q_proj.weight`) and in a llava-hf one
(`language_model.model.layers.3.self_attn.q_proj.weight`). Merging slot by slot is what lets
a VLM's language backbone be merged with a plain LLM.
"""

from __future__ import annotations

from typing import NamedTuple


class Slot(NamedTuple):
    component: str  # "text", "vision", "projector", "image_newline", "unet", "other"
    layer: int | None  # decoder layer / UNet block index; None for tensors outside layers
    role: str  # the layout-independent rest of the name

    def __str__(self) -> str:
        layer = "" if self.layer is None else f"[{self.layer}]"
        return f"{self.component}{layer}:{self.role}"


class Adapter:
    """Base class. Subclasses fill `kind`, `layout`, `num_layers` and the two mappings."""

    kind: str = "unknown"  # "llm", "vlm" or "sdxl_unet"
    layout: str = "unknown"
    num_layers: int = 0
    #: components whose tensors are merged; all others are copied from one source
    merged_components: frozenset[str] = frozenset()
    #: roles whose first axis is the vocabulary (merged on shared rows when sizes differ)
    vocab_roles: frozenset[str] = frozenset()

    def slot_of(self, name: str) -> Slot:
        raise NotImplementedError

    def name_of(self, slot: Slot) -> str | None:
        """The tensor name this layout uses for `slot`, or None if it has none."""
        raise NotImplementedError

    def layer_groups(self) -> list[str]:
        """One label per layer index (what a per-layer gradient list walks over)."""
        return [f"layers.{i}" for i in range(self.num_layers)]

    def layer_t(self, name: str) -> float:
        """mergekit's gradient position: layer i of n is at i/(n-1); tensors outside layers at 0."""
        layer = self.slot_of(name).layer
        if layer is None:
            return 0.0
        return layer / (self.num_layers - 1) if self.num_layers > 1 else 1.0

    def is_merged(self, name: str) -> bool:
        return self.slot_of(name).component in self.merged_components

    def is_cross_attn_kv(self, name: str) -> bool:
        """True for cross-attention K/V projections (SDXL `attn2.to_k/to_v`)."""
        return False

    def describe(self) -> str:
        return f"{self.kind} ({self.layout}, {self.num_layers} layer groups)"
