"""Constrained calls (tool_choice auto, the call held to the tools' schemas once the model opens it) vs the same model
writing its calls unconstrained: accuracy and eval time on the same held-out cases, side by side.

Same GGUF, same cases, greedy, same threads; the two settings run one after the other, twice each in alternating
order (off, on, off, on), and the faster of each pair's times is kept, so a warm page cache or a busy moment does not
decide the ratio. Accuracy is the same in both rounds (greedy decoding): the first round's is printed, with every case
whose verdict differs and what each setting wrote.

    python bench/constrained_calls.py --model runs/demo/gguf/model-f16.gguf \
        [--data glaive_toolcall_en_demo --split val --val-size 30 --seed 42] \
        [--categories simple,multiple,parallel,parallel_multiple] [--max-tokens 80] [--threads 2]

The demo's tuned F16 (``tooltune demo`` writes it to ``runs/demo/gguf/model-f16.gguf``) with the defaults above is
the measurement in docs/serve.md; ``--data runs/seed-tools/synth/seed_tools_test.json --split all`` scores the
seed-tools demo's held-out file instead.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a tuned GGUF (the base model rarely calls)")
    parser.add_argument("--data", default="glaive_toolcall_en_demo")
    parser.add_argument("--split", default="val", help="val: the held-out part of the val_size split; all: every case")
    parser.add_argument("--val-size", type=float, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--categories", default="simple,multiple,parallel,parallel_multiple")
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["TOOLTUNE_THREADS"] = str(args.threads)

    from tooltune.commands.eval import collect_cases
    from tooltune.eval import evaluate

    cases = collect_cases(args.data, split=None if args.split == "all" else args.split,
                          val_size=args.val_size if args.split != "all" else None, seed=args.seed,
                          categories=[c for c in args.categories.split(",") if c] or None)
    print(f"{len(cases)} cases from {args.data}; model {args.model}; {args.threads} threads; greedy, "
          f"{args.max_tokens} tokens per reply")

    seconds: dict[bool, list[float]] = {False: [], True: []}
    reports = {}
    for constrain in (False, True, False, True):
        started = time.perf_counter()
        report = evaluate([str(args.model)], cases, None, max_tokens=args.max_tokens, progress=False,
                          chat_template="qwen", constrain_calls=constrain, plot=False)
        seconds[constrain].append(time.perf_counter() - started)
        reports.setdefault(constrain, report)

    def figures(constrain: bool) -> str:
        scores = reports[constrain].runs[0].scores
        calls = [s for s in scores if s.expected_calls]
        named = sum(bool(s.outcomes.get("name")) for s in calls)
        argued = sum(bool(s.outcomes.get("arguments_ast")) for s in calls)
        return (f"right function {named}/{len(calls)} ({100 * named / len(calls):.0f}%), right arguments {argued}/"
                f"{len(calls)} ({100 * argued / len(calls):.0f}%), {min(seconds[constrain]):.1f} s")

    print(f"unconstrained: {figures(False)}")
    print(f"constrained:   {figures(True)}")
    for free, held in zip(reports[False].runs[0].scores, reports[True].runs[0].scores, strict=True):
        if free.correct != held.correct:
            print(f"  {free.case_id}: {'fixed' if held.correct else 'broken'}\n"
                  f"    unconstrained: {free.output.strip()[:200]!r}\n    constrained:   {held.output.strip()[:200]!r}")
    ratio = min(seconds[True]) / min(seconds[False])
    print(f"eval time constrained / unconstrained: {ratio:.2f}x")


if __name__ == "__main__":
    main()
