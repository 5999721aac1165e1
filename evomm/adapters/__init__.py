"""Architecture adapters: tensor names <-> slots (component, layer index, role).

`adapter_for(source)` picks the adapter for an opened checkpoint: decoder LLMs (Mistral,
Llama, Qwen2, any `model.layers.N` layout), LLaVA / LLaVA-NeXT in their three on-disk
layouts, and SDXL UNets (diffusers or single-file names, grouped into blocks).
"""

from __future__ import annotations

from evomm.adapters.base import Adapter, Slot
from evomm.adapters.decoder import LAYOUTS, DecoderAdapter, Layout, detect_layout
from evomm.adapters.sdxl import LDM_PREFIX, SDXLUNetAdapter, diffusers_to_ldm_names, ldm_to_diffusers
from evomm.errors import ArchitectureError


def adapter_for_names(names: list[str], config: dict | None = None, label: str = "model") -> Adapter:
    """Detect the architecture from tensor names (config.json only refines it)."""
    if any(n.startswith(LDM_PREFIX) for n in names) or any(
        n.startswith(("down_blocks.", "conv_in.")) for n in names
    ):
        return SDXLUNetAdapter(names, config)
    layout = detect_layout(names)
    if layout is not None:
        return DecoderAdapter(layout, names, config)
    raise ArchitectureError(
        f"{label}: unrecognised architecture (expected a decoder LLM with model.layers.N, "
        "a LLaVA-style VLM or an SDXL UNet)"
    )


def checkpoint_layers(path) -> int:
    """Layer groups of a checkpoint folder or file, counted from its tensor names (decoder
    layers, SDXL blocks): configs may leave `num_hidden_layers` at its default, names cannot."""
    from evomm.io.sources import open_source

    source = open_source(path)
    try:
        return int(getattr(adapter_for(source), "num_layers", 0))
    finally:
        source.close()


def adapter_for(source) -> Adapter:
    """The adapter for an opened `evomm.io.TensorSource`."""
    return adapter_for_names(source.keys(), source.config, label=source.name)


__all__ = [
    "Adapter", "ArchitectureError", "DecoderAdapter", "LAYOUTS", "LDM_PREFIX", "Layout",
    "SDXLUNetAdapter", "Slot", "adapter_for", "adapter_for_names", "checkpoint_layers", "detect_layout", "diffusers_to_ldm_names",
    "ldm_to_diffusers",
]
