"""Benchmark loaders: JA-VG-VQA-500, JA-VLM-Bench-In-the-Wild and JSONL + images."""

from evomm.data.vqa import (
    JA_VG_VQA_500,
    JA_VLM_WILD,
    JSONL,
    VQADataset,
    VQAExample,
    load_benchmark,
    load_ja_vg_vqa_500,
    load_ja_vlm_bench_in_the_wild,
    load_jsonl,
)

__all__ = [
    "JA_VG_VQA_500",
    "JA_VLM_WILD",
    "JSONL",
    "VQADataset",
    "VQAExample",
    "load_benchmark",
    "load_ja_vg_vqa_500",
    "load_ja_vlm_bench_in_the_wild",
    "load_jsonl",
]
