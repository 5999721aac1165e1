"""Arithmetic word problems in English and Japanese, with step-by-step answers ending in the number.

Every problem exists in both languages (the same story, names, objects and numbers), so a
shared base can be pretrained on parallel text, and the specialists on one language each.
Kinds: `add`, `sub`, `mul` (one operation) and `multi` (two or three additions and
subtractions, left to right, values at most 40). Answers
reason one operation per sentence and end with the number, as Sakana's MGSM scoring expects:

  EN  Taro has 3 apples. He buys 5 more. ... -> "3 + 5 = 8. The answer is 8."
  JA  たろうはりんごを3個持っています。さらに5個買いました。… -> "3 + 5 = 8です。答えは8です。"

`problems(seed, n)` is deterministic; `split_problems` puts each distinct (kind, numbers,
story) into exactly one split, so held-out problems were never seen in training.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

KINDS = ("add", "sub", "mul", "multi")
# (English noun plural, Japanese noun, Japanese counter)
OBJECTS = (("apples", "りんご", "個"), ("pens", "ペン", "本"), ("books", "本", "冊"), ("cards", "カード", "枚"),
           ("eggs", "たまご", "個"), ("stickers", "シール", "枚"), ("flowers", "花", "本"), ("coins", "コイン", "枚"))
NAMES = (("Taro", "たろう", "He"), ("Hanako", "はなこ", "She"), ("Ken", "けん", "He"), ("Yumi", "ゆみ", "She"),
         ("Sora", "そら", "He"), ("Mei", "めい", "She"))


@dataclass(frozen=True)
class Problem:
    id: str
    kind: str
    numbers: tuple[int, ...]
    ops: tuple[str, ...]
    name: int
    obj: int
    answer_number: int

    def text(self, lang: str) -> tuple[str, str]:
        """(question, step-by-step answer) in `lang` ("en" or "ja")."""
        return _english(self) if lang == "en" else _japanese(self)

    def records(self) -> list[dict]:
        out = []
        for lang in ("en", "ja"):
            question, answer = self.text(lang)
            out.append({"id": f"{self.id}-{lang}", "lang": lang, "kind": self.kind, "question": question,
                        "answer": answer, "answer_number": self.answer_number, **{"numbers": list(self.numbers)}})
        return out


def _apply(value: int, op: str, n: int) -> int:
    return value + n if op == "+" else value - n if op == "-" else value * n


def make_problem(rng: random.Random, kind: str, index: int) -> Problem:
    name, obj = rng.randrange(len(NAMES)), rng.randrange(len(OBJECTS))
    if kind == "add":
        ops, numbers = ("+",), (rng.randint(1, 20), rng.randint(1, 20))
    elif kind == "sub":
        a = rng.randint(2, 30)
        ops, numbers = ("-",), (a, rng.randint(1, a - 1))
    elif kind == "mul":
        ops, numbers = ("*",), (rng.randint(2, 9), rng.randint(2, 9))
    else:  # two or three additions/subtractions, left to right, never below zero, at most 40
        value = rng.randint(2, 20)
        numbers, op_list = [value], []
        for _ in range(rng.choice((2, 3))):
            op = rng.choice("+-")
            if op == "-" and value < 2 or op == "+" and value > 30:
                op = "+" if op == "-" else "-"
            n = rng.randint(1, value - 1) if op == "-" else rng.randint(1, min(12, 40 - value))
            numbers.append(n)
            op_list.append(op)
            value = _apply(value, op, n)
        ops, numbers = tuple(op_list), tuple(numbers)
    value = numbers[0]
    for op, n in zip(ops, numbers[1:]):
        value = _apply(value, op, n)
    return Problem(f"{kind}{index:05d}", kind, tuple(numbers), tuple(ops), name, obj, value)


_EN_STEP = {"+": "{who} gets {n} more", "-": "{who} gives away {n}", "*": "the number becomes {n} times as many"}
_JA_STEP = {"+": "さらに{n}{c}もらいました", "-": "{n}{c}あげました", "*": "数が{n}倍になりました"}
_SYMBOL = {"+": "+", "-": "-", "*": "×"}


def _steps(p: Problem) -> list[tuple[str, int, int, int]]:
    """(op, n, value before, value after) for each operation, left to right."""
    out, value = [], p.numbers[0]
    for op, n in zip(p.ops, p.numbers[1:]):
        new = _apply(value, op, n)
        out.append((op, n, value, new))
        value = new
    return out


def _english(p: Problem) -> tuple[str, str]:
    name, _, pronoun = NAMES[p.name]
    noun = OBJECTS[p.obj][0]
    if p.kind == "mul":
        a, b = p.numbers
        question = f"{name} has {a} boxes with {b} {noun} in each box. How many {noun} does {name} have?"
        return question, f"{a} × {b} = {p.answer_number}. The answer is {p.answer_number}."
    steps = _steps(p)
    parts = [f"{name} has {p.numbers[0]} {noun}."] + [_EN_STEP[op].format(who=pronoun, n=n).capitalize() + "."
                                                      for op, n, _, _ in steps]
    question = " ".join(parts) + f" How many {noun} does {name} have now?"
    work = " ".join(f"{old} {_SYMBOL[op]} {n} = {new}." for op, n, old, new in steps)
    return question, work + f" The answer is {p.answer_number}."


def _japanese(p: Problem) -> tuple[str, str]:
    _, name, _ = NAMES[p.name]
    _, noun, counter = OBJECTS[p.obj]
    if p.kind == "mul":
        a, b = p.numbers
        question = f"{name}は{noun}が{b}{counter}ずつ入った箱を{a}箱持っています。{noun}は全部で何{counter}ですか？"
        return question, f"{a} × {b} = {p.answer_number}です。答えは{p.answer_number}です。"
    steps = _steps(p)
    parts = [f"{name}は{noun}を{p.numbers[0]}{counter}持っています。"] + [_JA_STEP[op].format(n=n, c=counter) + "。"
                                                                for op, n, _, _ in steps]
    question = "".join(parts) + f"{noun}は今何{counter}ありますか？"
    work = "".join(f"{old} {_SYMBOL[op]} {n} = {new}です。" for op, n, old, new in steps)
    return question, work + f"答えは{p.answer_number}です。"


def problems(seed: int, n: int, kinds: tuple[str, ...] = KINDS) -> list[Problem]:
    """`n` distinct problems, the kinds in turn (deterministic in `seed`)."""
    rng, seen, out = random.Random(seed), set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"only {len(out)} distinct problems of kinds {kinds} could be made")
        kind = kinds[len(out) % len(kinds)]
        problem = make_problem(rng, kind, len(out))
        key = (problem.kind, problem.numbers, problem.ops, problem.name, problem.obj)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def split_problems(seed: int, sizes: dict[str, int]) -> dict[str, list[Problem]]:
    """Disjoint splits (e.g. {"train": 4000, "fitness": 200, "test": 400}) from one stream."""
    pool = problems(seed, sum(sizes.values()))
    random.Random(seed + 1).shuffle(pool)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = pool[start:start + size]
        start += size
    return out


def as_dict(problem: Problem) -> dict:
    return asdict(problem)


def write_split(path, items: list[Problem], lang: str = "ja") -> None:
    """One JSONL row per problem in `lang` (`question`, `answer`, `answer_number`, `kind`, ...)."""
    import json
    from pathlib import Path

    rows = [r for p in items for r in p.records() if r["lang"] == lang]
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
