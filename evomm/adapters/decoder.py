"""Decoder LLMs and LLaVA-style VLMs, described as data (one `Layout` per on-disk naming).

Every layout puts the language model's tensors under a prefix, its decoder layers under
`<prefix>layers.N.`, and the LM head somewhere; VLM layouts add components that are never
merged (vision tower, projector, image_newline). Adding an architecture with the same shape
is one more `Layout` entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from evomm.adapters.base import Adapter, Slot
from evomm.errors import ArchitectureError


@dataclass(frozen=True)
class Layout:
    name: str
    kind: str  # "llm" or "vlm"
    text_prefix: str  # the language model's decoder: <text_prefix>layers.N..., embed_tokens, norm
    lm_head: str
    #: prefix -> component for tensors copied unchanged from the VLM (checked before text_prefix)
    kept: dict[str, str] = field(default_factory=dict)
    #: a name prefix only this layout has (used for detection)
    marker: str = ""
    #: kept prefix -> a naming level some checkpoints of this layout have below it and others
    #: not: llava-hf files hold `vision_tower.vision_model.X`, transformers 5 keeps
    #: `model.vision_tower.X` in memory. Slots drop the level, so both sides match.
    optional_levels: dict[str, str] = field(default_factory=dict)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        # transformers / llava-hf on disk: LlavaForConditionalGeneration.save_pretrained
        Layout("llava_hf", "vlm", "language_model.model.", "language_model.lm_head.weight",
               {"vision_tower.": "vision", "multi_modal_projector.": "projector",
                "image_newline": "image_newline"}, marker="language_model.model.layers.",
               optional_levels={"vision_tower.": "vision_model."}),
        # transformers 5 in-memory names (also what some re-saved checkpoints hold)
        Layout("llava_tf5", "vlm", "model.language_model.", "lm_head.weight",
               {"model.vision_tower.": "vision", "model.multi_modal_projector.": "projector",
                "model.image_newline": "image_newline"}, marker="model.language_model.layers.",
               optional_levels={"model.vision_tower.": "vision_model."}),
        # the original LLaVA repo (haotian-liu/LLaVA): LLM names plus mm_projector / vision_tower
        Layout("llava_original", "vlm", "model.", "lm_head.weight",
               {"model.vision_tower.": "vision", "model.mm_projector.": "projector",
                "model.image_newline": "image_newline"}, marker="model.mm_projector."),
        # Mistral, Llama, Qwen2 and every other `model.layers.N` causal LM
        Layout("causal_lm", "llm", "model.", "lm_head.weight", marker="model.layers."),
    )
}

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
LM_HEAD_ROLE = "lm_head.weight"


def detect_layout(names: list[str]) -> Layout | None:
    """The first layout whose marker prefix some tensor name carries."""
    for layout in LAYOUTS.values():
        if any(n.startswith(layout.marker) for n in names):
            return layout
    return None


class DecoderAdapter(Adapter):
    """Slots for a decoder LLM or the language backbone (+ kept parts) of a LLaVA VLM."""

    vocab_roles = frozenset({"embed_tokens.weight", LM_HEAD_ROLE})
    merged_components = frozenset({"text"})

    def __init__(self, layout: Layout, names: list[str], config: dict | None = None):
        self.layout_spec = layout
        self.layout = layout.name
        self.kind = layout.kind
        self.config = config or {}
        # the optional levels these names do have (name_of puts them back)
        self.levels = {prefix: level for prefix, level in layout.optional_levels.items()
                       if any(n.startswith(prefix + level) for n in names)}
        layers = {s.layer for s in map(self.slot_of, names) if s.layer is not None}
        self.num_layers = max(layers) + 1 if layers else 0

    def slot_of(self, name: str) -> Slot:
        lay = self.layout_spec
        for prefix, component in lay.kept.items():
            if name.startswith(prefix):
                role = name[len(prefix):] or component
                level = lay.optional_levels.get(prefix)
                if level and role.startswith(level):
                    role = role[len(level):]
                return Slot(component, None, role)
        if name == lay.lm_head:
            return Slot("text", None, LM_HEAD_ROLE)
        if name.startswith(lay.text_prefix):
            rest = name[len(lay.text_prefix):]
            match = _LAYER.fullmatch(rest)
            if match:
                return Slot("text", int(match.group(1)), match.group(2))
            return Slot("text", None, rest)
        return Slot("other", None, name)

    def name_of(self, slot: Slot) -> str | None:
        lay = self.layout_spec
        if slot.component == "text":
            if slot.role == LM_HEAD_ROLE and slot.layer is None:
                return lay.lm_head
            if slot.layer is not None:
                return f"{lay.text_prefix}layers.{slot.layer}.{slot.role}"
            return f"{lay.text_prefix}{slot.role}"
        if slot.component == "other":
            return slot.role
        for prefix, component in lay.kept.items():
            if component == slot.component:
                if slot.role == component and not prefix.endswith("."):
                    return prefix
                return prefix + self.levels.get(prefix, "") + slot.role
        return None

    def layer_groups(self) -> list[str]:
        return [f"layers.{i}" for i in range(self.num_layers)]

    def model_class(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type", self.layout)


def decoder_adapter(names: list[str], config: dict | None = None) -> DecoderAdapter:
    layout = detect_layout(names)
    if layout is None:
        raise ArchitectureError("no decoder layout matches these tensor names")
    return DecoderAdapter(layout, names, config)
