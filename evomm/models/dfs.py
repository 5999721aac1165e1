"""Data-flow-space (DFS) merging: a decoder whose layers are a path through several models.

A DFS merge keeps every weight as it is and chooses the *route* a token takes: an ordered
list of `(source, layer)` pairs drawn from the sources' layer stacks, with a scale on the
hidden state entering each position (the paper's W_ij for the hop from layer i to layer j).
The result can be deeper than any source.

Two ways to get a `DFSForCausalLM`:

* `DFSForCausalLM.from_sources(sources, path, scales)` for the search: the model *refers*
  to the sources' layer modules (no copies), and `set_path` / `apply_spec` swap in another
  candidate's path and scales in microseconds. Repeated layers share weights in memory; each
  path position still gets its own key/value-cache slot (see `_PositionCache`).
* `from_pretrained(dir)` of a saved DFS model: every path position is a plain decoder layer
  of the base architecture (repeated layers are written out once per position), and the
  scales live in `config.dfs_input_scales`. With all scales 1 the checkpoint also loads as
  the base architecture (e.g. `MistralForCausalLM.from_pretrained`).

The base architecture is any Llama-style decoder in transformers (Mistral, Llama, Qwen2, …:
`embed_tokens`, `layers`, `norm`, `rotary_emb`, `lm_head`). A source may be an `XForCausalLM`,
a bare `XModel`, or a LLaVA model (its language backbone and head are used);
`dfs_into_llava` puts a DFS backbone back into a LLaVA model.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from evomm.errors import DFSError
from evomm.models.hf_cache import CACHE_NAMES, cache_keyword, output_cache_field

MODEL_TYPE = "evomm_dfs"

# config fields that describe the layer stack rather than the layer shapes: they are not
# copied from a source config into a DFS config
_STACK_KEYS = ("model_type", "architectures", "num_hidden_layers", "layer_types", "_name_or_path",
               "transformers_version", "auto_map", "max_window_layers", "sliding_window")
# config fields that must agree between sources so that their layers can be chained
# (rotary embedding settings and attention windows may differ: every path position keeps its
# own source's rotary embedding, and its own attention kind; see `DFSModel`)
_SHAPE_KEYS = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "_attn_implementation")


class DFSConfig(PreTrainedConfig):
    """A base decoder config (all its fields, flattened in) plus the DFS path and scales.

    The base fields are kept at the top level so that the decoder layer classes of the base
    architecture can be built from this config directly, and so that `config.json` also reads
    as a plain base config with `num_hidden_layers = len(dfs_path)`.
    """

    model_type = MODEL_TYPE

    use_cache: bool = True
    dfs_base_model_type: str = "mistral"
    # [[source index, layer index], ...], one entry per layer of this model
    dfs_path: list | None = None
    # scale multiplied into the hidden state entering each position (1.0 at position 0)
    dfs_input_scales: list | None = None
    # names of the source models (informational: where the layers came from)
    dfs_sources: list | None = None
    dfs_embed_source: int = 0
    dfs_head_source: int = 0
    # rotary settings (`rope_parameters`) of each source: a layer keeps its source's rotary
    # embedding wherever it sits on the path (LLaVA-1.6-Mistral: theta 1e6, shisa: 1e4)
    dfs_rope_parameters: list | None = None

    def attention_type(self, position: int) -> str:
        """Mask kind for a path position: the base's `layer_types`, else from `sliding_window`."""
        return layer_attention_type(self, position)


@dataclass
class _SourceParts:
    """The pieces of one source model a DFS model can borrow."""

    backbone: nn.Module  # has embed_tokens, layers, norm, rotary_emb
    lm_head: nn.Module | None
    config: PreTrainedConfig  # the decoder (text) config
    generation_config: Any = None


def decoder_parts(model: nn.Module) -> _SourceParts:
    """Find the decoder backbone, head and text config of a causal LM, bare decoder or LLaVA."""
    generation_config = getattr(model, "generation_config", None)
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "language_model"):  # LlavaForConditionalGeneration (tf5)
        backbone, head = inner.language_model, getattr(model, "lm_head", None)
    elif hasattr(model, "language_model") and not hasattr(model, "layers"):  # LlavaModel
        backbone, head = model.language_model, None
    elif inner is not None and hasattr(inner, "layers"):  # XForCausalLM
        backbone, head = inner, getattr(model, "lm_head", None)
    elif hasattr(model, "layers") and hasattr(model, "embed_tokens"):  # XModel
        backbone, head = model, None
    else:
        raise DFSError(f"{type(model).__name__} is not a decoder model DFS can take layers from")
    if isinstance(backbone, DFSModel):
        raise DFSError("a source is itself a DFS model; pass the original sources instead")
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(backbone, name):
            raise DFSError(f"{type(backbone).__name__} has no `{name}`: not a Llama-style decoder")
    return _SourceParts(backbone, head, backbone.config, generation_config)


def _decoder_classes(base_model_type: str) -> tuple[type, type, type]:
    """(decoder layer, RMSNorm, rotary embedding) classes of a transformers architecture."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    model_name = MODEL_MAPPING_NAMES.get(base_model_type)
    if isinstance(model_name, (list, tuple)):
        model_name = model_name[0]
    model_cls = getattr(transformers, model_name, None) if model_name else None
    if model_cls is None:
        raise DFSError(f"unknown base architecture {base_model_type!r} for a DFS model")
    module = sys.modules[model_cls.__module__]
    prefix = model_name[: -len("Model")]
    layer_names = list(getattr(model_cls, "_no_split_modules", None) or []) + [f"{prefix}DecoderLayer"]
    layer_cls = next((getattr(module, n) for n in layer_names if hasattr(module, n)), None)
    norm_cls = getattr(module, f"{prefix}RMSNorm", None)
    rotary_cls = getattr(module, f"{prefix}RotaryEmbedding", None)
    if layer_cls is None or norm_cls is None or rotary_cls is None:
        raise DFSError(f"{model_name} is not a Llama-style decoder (no DecoderLayer/RMSNorm/RotaryEmbedding)")
    return layer_cls, norm_cls, rotary_cls


def check_path(path: Sequence[Sequence[int]], source_depths: Sequence[int]) -> list[list[int]]:
    """Validate a path against the sources' layer counts; return it as a list of [src, layer]."""
    if len(path) == 0:
        raise DFSError("a DFS path needs at least one layer")
    out = []
    for position, item in enumerate(path):
        if len(item) != 2:
            raise DFSError(f"path position {position}: expected [source, layer], got {item!r}")
        src, layer = int(item[0]), int(item[1])
        if not 0 <= src < len(source_depths):
            raise DFSError(f"path position {position}: source {src} out of range (have {len(source_depths)})")
        if not 0 <= layer < source_depths[src]:
            raise DFSError(f"path position {position}: source {src} has no layer {layer} "
                           f"(it has {source_depths[src]})")
        out.append([src, layer])
    return out


def check_scales(scales: Sequence[float] | None, length: int) -> list[float]:
    """Per-position input scales (default all 1); finite and one per path position."""
    if scales is None:
        return [1.0] * length
    scales = [float(s) for s in scales]
    if len(scales) != length:
        raise DFSError(f"{len(scales)} scales for a path of {length} layers")
    if not all(math.isfinite(s) for s in scales):
        raise DFSError(f"DFS scales must be finite, got {scales}")
    return scales


def scales_from_w(path: Sequence[Sequence[int]], w: Any, num_layers: Sequence[int]) -> list[float]:
    """Per-position input scales from a scaling matrix W, as the paper writes it.

    `w` is either M×M over all layers of the sources in concatenation order (M = sum of
    `num_layers`; W[i][j] scales the hidden state passed from layer i to layer j) or S×S over
    the sources (W[a][b] scales every hop from a layer of source a to one of source b). The
    first position takes the embeddings unscaled.
    """
    path = check_path(path, num_layers)
    w = torch.as_tensor(w, dtype=torch.float64)
    offsets = [sum(num_layers[:s]) for s in range(len(num_layers))]
    total = sum(num_layers)
    if tuple(w.shape) == (total, total):
        index = [offsets[s] + l for s, l in path]
    elif tuple(w.shape) == (len(num_layers), len(num_layers)):
        index = [s for s, _ in path]
    else:
        raise DFSError(f"W must be {total}x{total} (layer pairs) or {len(num_layers)}x{len(num_layers)} "
                       f"(source pairs), got {tuple(w.shape)}")
    return check_scales([1.0] + [float(w[i, j]) for i, j in zip(index, index[1:])], len(path))


class _PositionCache:
    """A view of a KV cache that files a layer's keys/values under its *path position*.

    A decoder layer writes `cache.update(k, v, self.layer_idx)` with the index it was built
    with; when one source layer appears at several positions, those writes would collide. The
    DFS forward hands each position this view instead, so repeated layers can share weights
    yet keep separate cache slots. Everything except `update` goes to the real cache.
    `written` tells the forward whether the layer really wrote through this view: a layer
    that took its cache from somewhere else (a renamed keyword) is caught, not ignored.
    """

    __slots__ = ("_cache", "_position", "written")

    def __init__(self, cache: Cache, position: int):
        self._cache = cache
        self._position = position
        self.written = False

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        self.written = True
        return self._cache.update(key_states, value_states, self._position, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cache, name)


class DFSPreTrainedModel(PreTrainedModel):
    config_class = DFSConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _skip_keys_device_placement = list(CACHE_NAMES)
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True


class DFSModel(DFSPreTrainedModel):
    """The DFS decoder backbone (drop-in for `MistralModel` & co., e.g. inside LLaVA)."""

    def __init__(self, config: DFSConfig):
        super().__init__(config)
        layer_cls, norm_cls, rotary_cls = _decoder_classes(config.dfs_base_model_type)
        self._no_split_modules = [layer_cls.__name__]
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(layer_cls(config, i) for i in range(config.num_hidden_layers))
        self.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = rotary_cls(config=config)
        # one rotary embedding per distinct source setting; `_source_rotary[s]` indexes it
        ropes = config.dfs_rope_parameters
        if ropes:
            distinct = [r for i, r in enumerate(ropes) if r not in ropes[:i]]
            self.rotary_embs = nn.ModuleList(rotary_cls(config=_with_rope(config, r)) for r in distinct)
            self._source_rotary = [distinct.index(r) for r in ropes]
        else:
            self.rotary_embs = nn.ModuleList([self.rotary_emb])
            self._source_rotary = None
        self._input_scales = check_scales(config.dfs_input_scales, config.num_hidden_layers)
        # set by `from_sources`: layer modules per source, which `set_path` picks from
        self._source_layers: list[list[nn.Module]] | None = None
        self._source_configs: list[PreTrainedConfig] | None = None
        self.register_state_dict_post_hook(_untie_repeated_layers)
        self.post_init()

    # -- building from sources (search) ---------------------------------------------------

    @classmethod
    def from_sources(
        cls,
        sources: Sequence[nn.Module],
        path: Sequence[Sequence[int]],
        scales: Sequence[float] | None = None,
        *,
        embed_source: int = 0,
        norm_source: int | None = None,
        source_names: Sequence[str] | None = None,
    ) -> DFSModel:
        """A DFS backbone that refers to the sources' modules (nothing is copied).

        `embed_source` gives the token embeddings, `norm_source` (default: the embedding
        source) the final norm. The sources stay usable on their own, but moving the DFS
        model to another device or dtype moves the shared modules too.
        """
        parts = [decoder_parts(m) for m in sources]
        _check_compatible(parts)
        names = list(source_names) if source_names is not None else [
            getattr(p.config, "_name_or_path", "") or f"source{i}" for i, p in enumerate(parts)]
        if len(names) != len(parts):
            raise DFSError(f"{len(names)} source names for {len(parts)} sources")
        norm_source = embed_source if norm_source is None else norm_source
        for label, idx in (("embed_source", embed_source), ("norm_source", norm_source)):
            if not 0 <= idx < len(parts):
                raise DFSError(f"{label}={idx} out of range (have {len(parts)} sources)")
        path = check_path(path, [len(p.backbone.layers) for p in parts])
        scales = check_scales(scales, len(path))
        config = _dfs_config(parts, path, scales, names, embed_source, norm_source)
        model = _empty_shell(cls, config)
        model._attach_sources(parts, embed_source, norm_source)
        model.set_path(path, scales)
        _check_no_meta(model)
        return model

    def _attach_sources(self, parts: list[_SourceParts], embed_source: int, norm_source: int) -> None:
        self._source_layers = [list(p.backbone.layers) for p in parts]
        self._source_configs = [p.config for p in parts]
        self.embed_tokens = parts[embed_source].backbone.embed_tokens
        self.norm = parts[norm_source].backbone.norm
        self.rotary_emb = parts[embed_source].backbone.rotary_emb
        ropes = [getattr(p.config, "rope_parameters", None) for p in parts]
        firsts = [ropes.index(r) for r in ropes]  # sources with equal settings share one module
        distinct = sorted(set(firsts))
        self.rotary_embs = nn.ModuleList(parts[i].backbone.rotary_emb for i in distinct)
        self._source_rotary = [distinct.index(f) for f in firsts]
        self.padding_idx = self.embed_tokens.padding_idx

    def set_path(self, path: Sequence[Sequence[int]], scales: Sequence[float] | None = None) -> None:
        """Re-route this model in place (only for models built with `from_sources`)."""
        if self._source_layers is None:
            raise DFSError("only a DFS model built with from_sources can change its path "
                           "(a loaded checkpoint has its layers fixed)")
        path = check_path(path, [len(layers) for layers in self._source_layers])
        scales = check_scales(scales, len(path))
        self.layers = nn.ModuleList(self._source_layers[s][l] for s, l in path)
        self._input_scales = scales
        config = self.config
        config.num_hidden_layers = len(path)
        config.dfs_path = path
        config.dfs_input_scales = scales
        config.layer_types = [layer_attention_type(self._source_configs[s], l) for s, l in path]

    def _apply(self, fn, *args, **kwargs):
        """`.to(device)` & co. also reach the source layers off the current path: a later
        `set_path` may take any of them, and they must live where the model runs."""
        super()._apply(fn, *args, **kwargs)
        if self._source_layers is not None:
            on_path = {id(layer) for layer in self.layers}
            for layers in self._source_layers:
                for layer in layers:
                    if id(layer) not in on_path:
                        layer._apply(fn, *args, **kwargs)
        return self

    @property
    def path(self) -> list[list[int]]:
        return [list(p) for p in self.config.dfs_path]

    @property
    def input_scales(self) -> list[float]:
        return list(self._input_scales)

    # -- forward ------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run the path. The cache comes as `cache` (transformers >= 5.24) or `past_key_values`."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if kwargs.pop("output_attentions", False):
            raise DFSError("DFS models do not return attention weights")
        kwargs.pop("return_dict", None)
        cache = _one_cache(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        kinds = [self.config.attention_type(p) for p in range(len(self.layers))]
        masks = attention_mask if isinstance(attention_mask, dict) else self._masks(
            set(kinds), inputs_embeds, attention_mask, cache, position_ids)

        hidden = inputs_embeds
        rotary_of = self._position_rotary()
        position_embeddings = {k: self.rotary_embs[k](hidden, position_ids=position_ids) for k in set(rotary_of)}
        all_hidden = [] if output_hidden_states else None
        for position, layer in enumerate(self.layers):
            scale = self._input_scales[position]
            if scale != 1.0:
                hidden = hidden * scale
            if all_hidden is not None:
                all_hidden.append(hidden)
            slot = None if cache is None else _PositionCache(cache, position)
            out = layer(
                hidden,
                attention_mask=masks[kinds[position]],
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings[rotary_of[position]],
                **{cache_keyword(layer.forward): slot},
                **kwargs,
            )
            if slot is not None and not slot.written:
                raise DFSError(f"the decoder layer at path position {position} ({type(layer).__name__}) did not "
                               "write to its own cache slot: this transformers release routes the cache "
                               "differently, and generation would mix up repeated layers")
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = self.norm(hidden)
        if all_hidden is not None:
            all_hidden.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **{output_cache_field(BaseModelOutputWithPast): cache},
        )

    def _position_rotary(self) -> list[int]:
        """Index into `rotary_embs` for each path position: its layer's source's rotary embedding."""
        if self._source_rotary is None:
            return [0] * len(self.layers)
        return [self._source_rotary[s] for s, _ in self.config.dfs_path]

    def _masks(self, kinds, inputs_embeds, attention_mask, cache, position_ids) -> dict:
        mask_kwargs = dict(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           position_ids=position_ids)
        masks = {}
        if "full_attention" in kinds:
            masks["full_attention"] = create_causal_mask(**mask_kwargs, **{cache_keyword(create_causal_mask): cache})
        if "sliding_attention" in kinds:
            builder = create_sliding_window_causal_mask
            masks["sliding_attention"] = builder(**mask_kwargs, **{cache_keyword(builder): cache})
        unknown = kinds - masks.keys()
        if unknown:
            raise DFSError(f"DFS models support full and sliding attention layers, not {sorted(unknown)}")
        return masks


class DFSForCausalLM(DFSPreTrainedModel, GenerationMixin):
    """A DFS decoder with a language-model head: `generate`, `save_pretrained`, `from_pretrained`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DFSConfig):
        super().__init__(config)
        self.model = DFSModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_sources(
        cls,
        sources: Sequence[nn.Module],
        path: Sequence[Sequence[int]],
        scales: Sequence[float] | None = None,
        *,
        embed_source: int = 0,
        head_source: int | None = None,
        source_names: Sequence[str] | None = None,
    ) -> DFSForCausalLM:
        """A DFS causal LM over `sources` that shares their modules (see `DFSModel.from_sources`).

        Embeddings come from `embed_source`; the final norm and `lm_head` from `head_source`
        (default: the embedding source), which must have a head and the same vocabulary.
        """
        head_source = embed_source if head_source is None else head_source
        if not 0 <= head_source < len(sources):
            raise DFSError(f"head_source={head_source} out of range (have {len(sources)} sources)")
        head_parts = decoder_parts(sources[head_source])
        if head_parts.lm_head is None:
            raise DFSError(f"head source {head_source} ({type(sources[head_source]).__name__}) has no lm_head")
        backbone = DFSModel.from_sources(sources, path, scales, embed_source=embed_source,
                                         norm_source=head_source, source_names=source_names)
        vocab = backbone.embed_tokens.num_embeddings
        if head_parts.lm_head.out_features != vocab:
            raise DFSError(f"lm_head of source {head_source} has {head_parts.lm_head.out_features} rows but "
                           f"the embeddings of source {embed_source} have {vocab}: tokenizers differ")
        backbone.config.dfs_head_source = head_source
        model = _empty_shell(cls, backbone.config)
        model.model = backbone
        model.lm_head = head_parts.lm_head
        model.config.tie_word_embeddings = model.lm_head.weight is backbone.embed_tokens.weight
        if head_parts.generation_config is not None:
            model.generation_config = copy.deepcopy(head_parts.generation_config)
        _check_no_meta(model)
        return model

    @classmethod
    def from_spec(cls, sources: Sequence[nn.Module], spec: dict[str, Any]) -> DFSForCausalLM:
        """Build from a decoded DFS genome; `sources` in the order of `spec["sources"]`."""
        _check_spec(spec)
        names = spec.get("sources")
        if names is not None and len(names) != len(sources):
            raise DFSError(f"the DFS spec names {len(names)} sources but {len(sources)} were given")
        return cls.from_sources(sources, spec["path"], spec.get("scales"),
                                embed_source=int(spec.get("embed_source", 0)),
                                head_source=spec.get("head_source"), source_names=names)

    def set_path(self, path: Sequence[Sequence[int]], scales: Sequence[float] | None = None) -> None:
        """Re-route in place: the next forward uses the new path and scales."""
        self.model.set_path(path, scales)

    def apply_spec(self, spec: dict[str, Any]) -> None:
        """Apply a decoded DFS genome (`{"type": "dfs", "path": ..., "scales": ...}`)."""
        apply_spec(self.model, spec)

    @property
    def path(self) -> list[list[int]]:
        return self.model.path

    @property
    def input_scales(self) -> list[float]:
        return self.model.input_scales

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        kwargs.pop("return_dict", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        field = output_cache_field(CausalLMOutputWithPast)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{field: getattr(outputs, output_cache_field(BaseModelOutputWithPast))},
        )


def apply_spec(model: DFSModel | DFSForCausalLM, spec: dict[str, Any]) -> None:
    """Set a DFS model's path and scales from a decoded genome spec."""
    _check_spec(spec)
    model.set_path(spec["path"], spec.get("scales"))


def _check_spec(spec: dict[str, Any]) -> None:
    if not isinstance(spec, dict) or spec.get("type") != "dfs":
        kind = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
        raise DFSError(f"expected a DFS spec (type: dfs), got type {kind!r}")
    if "path" not in spec:
        raise DFSError("DFS spec has no `path`")


def dfs_into_llava(llava: nn.Module, dfs: DFSModel | DFSForCausalLM) -> nn.Module:
    """Make `dfs` the language model of a LLaVA(-NeXT) model, in place; returns `llava`.

    The LLaVA keeps its vision tower and projector. Its `text_config` becomes the DFS config
    (so `generate` sizes its cache for the DFS depth), and if `dfs` is a causal LM its
    `lm_head` replaces LLaVA's. The DFS embeddings must have LLaVA's vocabulary (build the
    DFS model with `embed_source`/`head_source` pointing at the LLaVA source).
    """
    backbone = dfs.model if isinstance(dfs, DFSForCausalLM) else dfs
    if not isinstance(backbone, DFSModel):
        raise DFSError(f"expected a DFS model, got {type(dfs).__name__}")
    inner = getattr(llava, "model", None)
    if inner is None or not hasattr(inner, "language_model"):
        raise DFSError(f"{type(llava).__name__} is not a LLaVA model (no model.language_model)")
    text_config = llava.config.get_text_config(decoder=True)
    if backbone.config.hidden_size != text_config.hidden_size:
        raise DFSError(f"DFS hidden size {backbone.config.hidden_size} != LLaVA's {text_config.hidden_size}")
    vocab = backbone.embed_tokens.num_embeddings
    if vocab != text_config.vocab_size:
        raise DFSError(f"DFS embeddings have {vocab} rows but the LLaVA vocabulary has {text_config.vocab_size}; "
                       "take the embeddings from the LLaVA source")
    inner.language_model = backbone
    llava.config.text_config = backbone.config
    if isinstance(dfs, DFSForCausalLM):
        llava.lm_head = dfs.lm_head
    return llava


def save_dfs(model: DFSForCausalLM, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """`save_pretrained` into `out_dir` atomically (temp folder next to it, then rename)."""
    from evomm.io.outdir import atomic_output_dir

    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)


# -- helpers --------------------------------------------------------------------------------


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache, whichever name the caller used (generate passes `cache` from transformers 5.24)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise DFSError("two different caches were passed (cache and past_key_values)")
    return cache if cache is not None else past_key_values


def _check_compatible(parts: list[_SourceParts]) -> None:
    if not parts:
        raise DFSError("a DFS model needs at least one source")
    first = parts[0].config
    for i, part in enumerate(parts[1:], start=1):
        for key in _SHAPE_KEYS:
            a, b = getattr(first, key, None), getattr(part.config, key, None)
            if a != b:
                raise DFSError(f"source {i} differs from source 0 in {key} ({b!r} vs {a!r}): "
                               "its layers cannot be chained with source 0's")


def layer_attention_type(config: PreTrainedConfig, layer: int) -> str:
    """"full_attention" / "sliding_attention" for one layer of a decoder config."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return layer_types[layer]
    return "sliding_attention" if getattr(config, "sliding_window", None) is not None else "full_attention"


def _dfs_config(parts, path, scales, names, embed_source, head_source) -> DFSConfig:
    base = parts[embed_source].config
    fields = {k: v for k, v in base.to_dict().items() if k not in _STACK_KEYS}
    fields["layer_types"] = [layer_attention_type(parts[s].config, l) for s, l in path]
    return DFSConfig(
        **fields,
        sliding_window=_common_window(parts),
        dfs_rope_parameters=[getattr(p.config, "rope_parameters", None) for p in parts],
        num_hidden_layers=len(path),
        attn_implementation=base._attn_implementation,
        architectures=["DFSForCausalLM"],
        dfs_base_model_type=base.model_type,
        dfs_path=path,
        dfs_input_scales=scales,
        dfs_sources=list(names),
        dfs_embed_source=embed_source,
        dfs_head_source=head_source,
    )


def _common_window(parts: list[_SourceParts]) -> int | None:
    """The attention window of the sources' sliding layers (one mask serves them all)."""
    windows = {p.config.sliding_window for p in parts
               if any(layer_attention_type(p.config, l) == "sliding_attention" for l in range(len(p.backbone.layers)))}
    if len(windows) > 1:
        raise DFSError(f"the sources' sliding-window layers use different windows {sorted(windows)}; "
                       "a DFS model supports one window size")
    return windows.pop() if windows else None


def _with_rope(config: DFSConfig, rope_parameters: dict | None) -> DFSConfig:
    """A copy of `config` with another source's rotary settings (to build its rotary embedding)."""
    other = copy.copy(config)
    if rope_parameters is not None:
        other.rope_parameters = rope_parameters
    return other


def _empty_shell(cls: type[PreTrainedModel], config: DFSConfig) -> PreTrainedModel:
    """An instance of `cls` with no layers and meta tensors, to be filled with source modules."""
    shell_config = copy.copy(config)
    shell_config.num_hidden_layers = 0
    shell_config.dfs_input_scales = []
    if getattr(shell_config, "layer_types", None) is not None:
        shell_config.layer_types = []
    with torch.device("meta"):
        model = cls(shell_config)
    model.config = config
    return model


def _check_no_meta(model: nn.Module) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise DFSError(f"internal: DFS model has unfilled tensors {left[:3]}")


def _untie_repeated_layers(module: DFSModel, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Give every repeated layer its own tensors in a state dict.

    A layer used at several path positions shares its weights in memory, but a checkpoint
    must hold one plain layer per position (safetensors refuses aliased tensors, and the file
    should read as an ordinary decoder), so the second and later uses are copied here.
    """
    seen: set[int] = set()
    for position, layer in enumerate(module.layers):
        if id(layer) in seen:
            key_prefix = f"{prefix}layers.{position}."
            for key in [k for k in state_dict if k.startswith(key_prefix)]:
                tensor = state_dict[key]
                if not isinstance(tensor, nn.Parameter):
                    state_dict[key] = tensor.detach().clone()
        seen.add(id(layer))


AutoConfig.register(MODEL_TYPE, DFSConfig, exist_ok=True)
AutoModel.register(DFSConfig, DFSModel, exist_ok=True)
AutoModelForCausalLM.register(DFSConfig, DFSForCausalLM, exist_ok=True)
