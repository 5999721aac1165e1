"""`evomm eval`: benchmark models and write the paper's tables.

    evomm eval --config CONFIG.yaml [--out DIR]                       VLMs on Japanese VQA (ROUGE-L)
    evomm eval --lm-eval jp-lmeh --model NAME=PATH [--model ...]      LLMs on lm-eval tasks
    evomm eval --lm-eval toy_math_ja:acc_ja --include-path assets/math_zoo/lm_eval --model runs/toy_llm/dfs/model
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from evomm.errors import EvommError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="VLM eval config YAML (see eval/configs/)")
    llm = parser.add_argument_group("LLMs on lm-evaluation-harness tasks")
    llm.add_argument("--lm-eval", dest="lm_eval", default=None, metavar="TASKS",
                     help="'jp-lmeh' (the paper's Japanese tasks) or task[:metric],... (metric default acc)")
    llm.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                     help="checkpoint to evaluate (DFS checkpoints too); repeatable")
    llm.add_argument("--include-path", action="append", default=[], metavar="DIR", help="local lm-eval task folder")
    llm.add_argument("--batch-size", type=int, default=8)
    llm.add_argument("--num-fewshot", type=int, default=None)
    llm.add_argument("--apply-chat-template", action="store_true")
    llm.add_argument("--dtype", default="float32", help="model dtype (bfloat16 on GPUs)")
    llm.add_argument("--tokenizer", default=None, help="tokenizer path (default: each model's own)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: runs/eval/<config name>)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N questions of each benchmark (smoke runs)")
    parser.add_argument("--device", default=None, help="override the config's device (cpu, cuda, auto)")
    parser.add_argument("--threads", "--num-threads", dest="threads", type=int, default=None,
                        help="torch CPU threads")


def _models(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item.rstrip("/")).name or item, item
        if name in out:
            raise EvommError(f"--model {item}: the name {name!r} is given twice (write NAME=PATH)")
        out[name] = path
    return out


def _reporting(work: Callable[[], tuple[str, str]]) -> int:
    """Run `work` (returns the table and the "wrote ..." line); errors become one line and exit 2."""
    try:
        table, wrote = work()
    except EvommError as exc:
        print(f"evomm eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evomm eval: interrupted (no output written)", file=sys.stderr)
        return 130
    print(table)
    print(wrote, file=sys.stderr)
    return 0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_llm(args: argparse.Namespace) -> tuple[str, str]:
    from evomm.evaluation_llm import evaluate_llms, parse_tasks, render_markdown, write_llm_report

    if not args.model:
        raise EvommError("--lm-eval: name at least one --model")
    if args.config:
        raise EvommError("give --config (VLM benchmarks) or --lm-eval (LLM tasks), not both")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    columns = parse_tasks(args.lm_eval)
    report = evaluate_llms(_models(args.model), columns, include_path=args.include_path, limit=args.limit,
                           batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                           apply_chat_template=args.apply_chat_template, dtype=args.dtype,
                           device=args.device or "cpu", tokenizer=args.tokenizer, log=_log)
    out = Path(args.out) if args.out else Path("runs") / "eval" / "lm_eval"
    write_llm_report(report, out)
    return render_markdown(report), f"wrote {out}/table.md, results.json"


def run_vlm(args: argparse.Namespace) -> tuple[str, str]:
    from evomm.evaluation import load_config, render_markdown, run_evaluation

    config = load_config(args.config)
    if args.limit is not None:
        for bench in config.benchmarks:
            bench.limit = min(bench.limit or args.limit, args.limit)
    if args.device:
        config.device = args.device
    if args.threads:
        config.threads = args.threads
    out = Path(args.out) if args.out else Path("runs") / "eval" / config.name
    report = run_evaluation(config, out_dir=out, config_dir=Path(args.config).resolve().parent, log=_log)
    return render_markdown(report), f"wrote {out}/table.md, rouge.png, results.json, predictions/"


def run(args: argparse.Namespace) -> int:
    if args.lm_eval:
        return _reporting(lambda: run_llm(args))
    if not args.config:
        print("evomm eval: give --config CONFIG.yaml (VLMs) or --lm-eval TASKS --model PATH (LLMs)", file=sys.stderr)
        return 2
    return _reporting(lambda: run_vlm(args))
