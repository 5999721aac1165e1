"""Greedy, batched answers from a causal LM, with the prompt template and stop strings of
Sakana's EvoLLM-JP evaluation (`ja-alpaca-cot`; generation stops at "Instruction"/"Response")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomm.errors import ConfigError

#: Sakana's Japanese Alpaca chain-of-thought prompt (evomerge/models/prompt_templates.py)
JA_ALPACA_COT = ("以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
                 "一歩一歩考えましょう。\n\n### 指示:\n{input}\n\n### 応答:")
TEXT_TEMPLATES: dict[str, str] = {"ja-alpaca-cot": JA_ALPACA_COT, "plain": "{input}"}
#: where Sakana's vLLM sampling stops
STOP_STRINGS: tuple[str, ...] = ("Instruction:", "Instruction", "Response:", "Response")


def build_prompt(template: str, question: str) -> str:
    text = TEXT_TEMPLATES.get(template, template)
    if "{input}" not in text:
        raise ConfigError(f"template {template!r}: not one of {sorted(TEXT_TEMPLATES)} and has no {{input}}")
    return text.replace("{input}", question)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first stop string (the stop string itself is dropped)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut].strip()


class TextGenerator:
    """Answers questions with `model` (any causal LM, DFS models included), greedily."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, template: str = "ja-alpaca-cot",
                 max_new_tokens: int = 256, batch_size: int = 8, stop: Sequence[str] = STOP_STRINGS):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_new_tokens, self.batch_size, self.stop = int(max_new_tokens), max(1, int(batch_size)), tuple(stop)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # decoder-only batches grow to the right

    def with_model(self, model: torch.nn.Module) -> "TextGenerator":
        self.model = model
        return self

    @torch.inference_mode()
    def generate(self, questions: Sequence[str]) -> list[str]:
        answers: list[str] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(questions), self.batch_size):
            prompts = [build_prompt(self.template, q) for q in questions[start:start + self.batch_size]]
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(device)
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
            texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            answers.extend(cut_at_stop(t, self.stop) for t in texts)
        return answers
