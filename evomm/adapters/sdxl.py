"""SDXL UNets: diffusers names and single-file (`model.diffusion_model.*`) names, in blocks.

Slots use diffusers names as the canonical role, so a single-file checkpoint can be merged
with a diffusers one. The layer index of a slot is its *block*, in forward order:

    embed | down.B.J ... down.B.sample ... | mid | up.B.J ... | out

`down.B.J` holds down block B's J-th resnet and attention, `down.B.sample` its downsampler,
`up.B.J` likewise (the upsampler joins the block's last unit, as in the single-file layout).
For SDXL that is 20 blocks, the granularity of block-weighted merging tools (IN00..IN08,
M00, OUT00..OUT08 plus embeddings and output), so a gradient list with one value per block
gives each block its own value.
"""

from __future__ import annotations

import re

from evomm.adapters.base import Adapter, Slot
from evomm.errors import ArchitectureError

LDM_PREFIX = "model.diffusion_model."

_LDM_SIMPLE = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "label_emb.0.0.": "add_embedding.linear_1.",
    "label_emb.0.2.": "add_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
}
_RESNET_RENAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."),
                   ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."),
                   ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut."))
_EMBED_PREFIXES = ("conv_in.", "time_embedding.", "add_embedding.", "class_embedding.")
_OUT_PREFIXES = ("conv_norm_out.", "conv_out.")
_CROSS_KV = re.compile(r"\.attn2\.to_[kv]\.")


def _resnet(rest: str) -> str:
    for old, new in _RESNET_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def ldm_to_diffusers(key: str, layers_per_block: int) -> str | None:
    """Map one UNet key of the single-file layout (without `model.diffusion_model.`)."""
    for old, new in _LDM_SIMPLE.items():
        if key.startswith(old):
            return new + key[len(old):]
    per = layers_per_block + 1
    m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        i, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        block, unit = (i - 1) // per, (i - 1) % per
        if sub == 0 and rest.startswith("op."):
            return f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}"
        if sub == 0:
            return f"down_blocks.{block}.resnets.{unit}.{_resnet(rest)}"
        return f"down_blocks.{block}.attentions.{unit}.{rest}"
    m = re.fullmatch(r"middle_block\.(\d+)\.(.+)", key)
    if m:
        sub, rest = int(m.group(1)), m.group(2)
        if sub % 2 == 0:
            return f"mid_block.resnets.{sub // 2}.{_resnet(rest)}"
        return f"mid_block.attentions.{sub // 2}.{rest}"
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        i, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        block, unit = i // per, i % per
        if sub == 0:
            return f"up_blocks.{block}.resnets.{unit}.{_resnet(rest)}"
        if rest.startswith("conv."):
            return f"up_blocks.{block}.upsamplers.0.{rest}"
        return f"up_blocks.{block}.attentions.{unit}.{rest}"
    return None


def _block_of(canonical: str, layers_per_block: int) -> tuple | None:
    """Sort key of a diffusers UNet name's block: (stage, block, unit)."""
    if canonical.startswith(_EMBED_PREFIXES):
        return (0, 0, 0)
    if canonical.startswith(_OUT_PREFIXES):
        return (4, 0, 0)
    if canonical.startswith("mid_block."):
        return (2, 0, 0)
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.", canonical)
    if not m:
        return None
    stage = 1 if m.group(1) == "down" else 3
    block, part, unit = int(m.group(2)), m.group(3), int(m.group(4))
    if part == "downsamplers":
        return (1, block, layers_per_block)  # after the block's units
    if part == "upsamplers":
        return (3, block, layers_per_block)  # joins the last unit
    return (stage, block, unit)


class SDXLUNetAdapter(Adapter):
    """Blocks of an SDXL-style UNet; works for diffusers and single-file names."""

    kind = "sdxl_unet"
    merged_components = frozenset({"unet"})

    def __init__(self, names: list[str], config: dict | None = None):
        self.config = config or {}
        ldm_names = [n for n in names if n.startswith(LDM_PREFIX)]
        self.layout = "single_file" if ldm_names else "diffusers"
        if self.layout == "single_file":
            self.layers_per_block = self._ldm_layers_per_block(ldm_names)
            self._canonical = {}
            for n in ldm_names:
                canonical = ldm_to_diffusers(n[len(LDM_PREFIX):], self.layers_per_block)
                if canonical is not None:
                    self._canonical[n] = canonical
        else:
            lpb = self.config.get("layers_per_block")
            self.layers_per_block = lpb if isinstance(lpb, int) else self._diffusers_layers_per_block(names)
            self._canonical = {n: n for n in names if _block_of(n, self.layers_per_block) is not None}
        self._name = {c: n for n, c in self._canonical.items()}
        keys = sorted({_block_of(c, self.layers_per_block) for c in self._canonical.values()})
        self._block_keys = keys
        self._block_index = {k: i for i, k in enumerate(keys)}
        self.num_layers = len(keys)
        if not keys:
            raise ArchitectureError("no UNet tensors found")

    @staticmethod
    def _ldm_layers_per_block(ldm_names: list[str]) -> int:
        outputs = {int(m.group(1)) for n in ldm_names
                   if (m := re.match(re.escape(LDM_PREFIX) + r"output_blocks\.(\d+)\.", n))}
        downsamplers = {n for n in ldm_names if re.search(r"input_blocks\.\d+\.0\.op\.weight$", n)}
        if not outputs:
            raise ArchitectureError("single-file UNet without output_blocks")
        num_blocks = len(downsamplers) + 1
        return (max(outputs) + 1) // num_blocks - 1

    @staticmethod
    def _diffusers_layers_per_block(names: list[str]) -> int:
        units = {int(m.group(1)) for n in names if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", n))}
        return max(units) + 1 if units else 1

    def slot_of(self, name: str) -> Slot:
        canonical = self._canonical.get(name)
        if canonical is None:
            return Slot("other", None, name)
        return Slot("unet", self._block_index[_block_of(canonical, self.layers_per_block)], canonical)

    def name_of(self, slot: Slot) -> str | None:
        if slot.component == "other":
            return slot.role
        return self._name.get(slot.role)

    def layer_groups(self) -> list[str]:
        labels = []
        for stage, block, unit in self._block_keys:
            if stage in (0, 2, 4):
                labels.append({0: "embed", 2: "mid", 4: "out"}[stage])
            elif stage == 1 and unit == self.layers_per_block:
                labels.append(f"down.{block}.sample")
            else:
                labels.append(f"{'down' if stage == 1 else 'up'}.{block}.{unit}")
        return labels

    def is_cross_attn_kv(self, name: str) -> bool:
        canonical = self._canonical.get(name)
        return canonical is not None and _CROSS_KV.search("." + canonical) is not None


def diffusers_to_ldm_names(names: list[str], layers_per_block: int) -> dict[str, str]:
    """Diffusers UNet names -> single-file names (with `model.diffusion_model.`).

    The inverse of `ldm_to_diffusers`, for writing or testing single-file checkpoints. Takes the
    whole name list because an upsampler's single-file index depends on whether its up block
    has attentions.
    """
    per = layers_per_block + 1
    inverse_simple = {new: old for old, new in _LDM_SIMPLE.items()}
    inverse_resnet = tuple((new, old) for old, new in _RESNET_RENAMES)
    up_with_attn = {int(m.group(1)) for n in names if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", n))}

    def resnet(rest: str) -> str:
        for new, old in inverse_resnet:
            if rest.startswith(new):
                return old + rest[len(new):]
        return rest

    out = {}
    for name in names:
        ldm = None
        for new, old in inverse_simple.items():
            if name.startswith(new):
                ldm = old + name[len(new):]
        m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", name)
        if m:
            side, b, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "down":
                i = 1 + b * per + (layers_per_block if part == "downsamplers" else j)
                ldm = {"resnets": f"input_blocks.{i}.0.{resnet(rest)}",
                       "attentions": f"input_blocks.{i}.1.{rest}",
                       "downsamplers": f"input_blocks.{i}.0.op.{rest.removeprefix('conv.')}"}[part]
            else:
                i = b * per + (layers_per_block if part == "upsamplers" else j)
                ldm = {"resnets": f"output_blocks.{i}.0.{resnet(rest)}",
                       "attentions": f"output_blocks.{i}.1.{rest}",
                       "upsamplers": f"output_blocks.{i}.{2 if b in up_with_attn else 1}.{rest}"}[part]
        m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if m:
            k = int(m.group(2))
            ldm = (f"middle_block.{2 * k}.{resnet(m.group(3))}" if m.group(1) == "resnets"
                   else f"middle_block.{2 * k + 1}.{m.group(3)}")
        if ldm is not None:
            out[name] = LDM_PREFIX + ldm
    return out
