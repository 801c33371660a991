"""Run the same cases against each target, score them, and write the report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tooltune.errors import TooltuneError
from tooltune.eval.cases import Case
from tooltune.eval.report import EvalReport, RunResult
from tooltune.eval.scoring import score_case
from tooltune.eval.targets import DecodeConfig, Generation, open_target

ParseMode = bool | Literal["both"]


def _parse_modes(lenient: ParseMode) -> list[str]:
    if lenient == "both":
        return ["strict", "lenient"]
    return ["lenient"] if lenient else ["strict"]


def _unique_label(label: str, taken: set[str]) -> str:
    candidate, counter = label, 2
    while candidate in taken:
        candidate, counter = f"{label} #{counter}", counter + 1
    return candidate


def evaluate(
    targets: list[str],
    cases: list[Case],
    out_dir: str | Path | None,
    lenient: ParseMode = False,
    max_tokens: int = 256,
    progress: bool = True,
    *,
    chat_template: str | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    n_ctx: int = 4096,
    plot: bool = True,
    constrain_calls: bool = True,
    console: Console | None = None,
) -> EvalReport:
    """Score every target on ``cases`` (generations are shared by the strict and lenient scorings under "both")."""
    if not targets:
        raise TooltuneError("no model to evaluate (--model PATH_OR_URL, repeatable)")
    if not cases:
        raise TooltuneError("no evaluation cases")
    console = console or Console(stderr=True)
    config = DecodeConfig(max_tokens=max_tokens, temperature=temperature, seed=seed, constrain_calls=constrain_calls)
    modes = _parse_modes(lenient)
    runs: list[RunResult] = []
    labels: set[str] = set()
    for spec in targets:
        target = open_target(spec, chat_template=chat_template, n_ctx=n_ctx)
        try:
            started = time.perf_counter()
            generations = _generate_all(target.label, target, cases, config, modes[0], progress, console)
            seconds = time.perf_counter() - started
        finally:
            target.close()
        base_label = _unique_label(target.label, labels)
        for mode in modes:
            label = base_label if len(modes) == 1 else f"{base_label} ({mode})"
            labels.add(label)
            scores = [score_case(c, g, lenient=mode == "lenient") for c, g in zip(cases, generations, strict=True)]
            runs.append(RunResult(label=label, target=spec, kind=target.kind, parse_mode=mode, scores=scores,
                                  seconds=seconds))  # fmt: skip
    settings = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "parse": "+".join(modes),
        "chat_template": chat_template or "model's own",
        "constrained calls": "on" if constrain_calls else "off",
    }
    report = EvalReport(runs=runs, n_cases=len(cases), settings=settings)
    if out_dir is not None:
        written = report.write(out_dir, plot=plot)
        console.print(f"wrote {', '.join(str(p) for p in written)}")
    console.print(report.summary_line())
    return report


def _generate_all(
    label: str,
    target: object,
    cases: list[Case],
    config: DecodeConfig,
    mode: str,
    progress: bool,
    console: Console,
) -> list[Generation]:
    """Generate for every case (in prompt order, see ``prompt_order``) with a progress bar showing the running
    accuracy; returns the generations in the cases' order."""
    generations: dict[int, Generation] = {}
    right = 0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[accuracy]}"),
        TimeElapsedColumn(),
    )
    # A log file or CI console gets a plain line every ~10% instead of a live bar it cannot redraw.
    plain = progress and not console.is_terminal
    every = max(1, len(cases) // 10)
    with Progress(*columns, console=console, disable=not progress or plain, transient=False) as bar:
        task = bar.add_task(label, total=len(cases), accuracy="")
        for index in prompt_order(cases):
            case = cases[index]
            generation = target.generate(case, config)  # type: ignore[attr-defined]
            generations[index] = generation
            right += score_case(case, generation, lenient=mode == "lenient").correct
            done = len(generations)
            accuracy = f"accuracy {right}/{done} ({100 * right / done:.0f}%)"
            bar.update(task, advance=1, accuracy=accuracy)
            if plain and (done % every == 0 or done == len(cases)):
                console.print(f"{label}: {done}/{len(cases)} cases, {accuracy}", highlight=False)
    return [generations[i] for i in range(len(cases))]


def prompt_order(cases: list[Case]) -> list[int]:
    """Case indices ordered so that prompts beginning alike run one after another: the same tools, the same system
    prompt, then the turns. llama.cpp (and vLLM's prefix cache) then reuses the prefix the previous case computed
    instead of reading it again — the tool list is most of a prompt, and a dataset's cases with the same tools are
    not always neighbours."""
    def key(index: int) -> tuple[str, tuple[str, ...]]:
        case = cases[index]
        # Turns compared one by one, so a conversation's earlier turn sorts before its continuation.
        return (json.dumps(case.tools, sort_keys=True, ensure_ascii=False),
                tuple(json.dumps(m, sort_keys=True, ensure_ascii=False) for m in case.messages))

    return sorted(range(len(cases)), key=key)
