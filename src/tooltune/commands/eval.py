"""``tooltune eval``: score tool calling of model files and running servers on the same cases, or compare two runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tooltune.errors import TooltuneError

if TYPE_CHECKING:
    from tooltune.eval.cases import Case

PARSE_MODES = ("strict", "lenient", "both")


def _training_data_keys(path: Path) -> dict[str, object]:
    """dataset / dataset_dir / val_size / seed / max_samples from a training YAML or JSON, so the split is the same."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TooltuneError(f"{path}: cannot read the training config ({exc})") from exc
    if not isinstance(raw, dict):
        raise TooltuneError(f"{path}: the training config must be a mapping of keys to values")
    keys = ("dataset", "dataset_dir", "val_size", "seed", "max_samples")
    return {key: raw[key] for key in keys if raw.get(key) is not None}


def data_sources(data: str | list[str] | None) -> list[str]:
    """Every ``--data`` value, repeated or comma-separated, in order; the same source twice is refused (it would count
    its cases twice)."""
    values = [data] if isinstance(data, str) else list(data or [])
    sources = [part.strip() for value in values for part in value.split(",") if part.strip()]
    seen: set[str] = set()
    for source in sources:
        if source in seen:
            raise TooltuneError(f"--data {source} is given twice; each dataset is scored once")
        seen.add(source)
    return sources


def _is_case_file(source: str) -> bool:
    """BFCL question files and saved cases.json are read on their own, not through dataset_info.json."""
    from tooltune.eval.cases import is_bfcl_file

    return is_bfcl_file(source) or (source.endswith("cases.json") and Path(source).is_file())


def collect_cases(
    data: str | list[str] | None,
    *,
    dataset_dir: str | None = None,
    answers: str | None = None,
    split: str | None = None,
    val_size: float | None = None,
    seed: int | None = None,
    train_config: Path | None = None,
    max_cases: int | None = None,
    categories: list[str] | None = None,
) -> list[Case]:
    """The cases of every source given (``--data`` repeated or comma-separated, and/or a training config's dataset)."""
    from tooltune.data.args import DataArguments
    from tooltune.eval import load_cases

    names = data_sources(data)
    # Datasets (names and .json/.jsonl files) load together as one comma list, exactly as training reads them, so a
    # --split val takes the same held-out records; BFCL and cases.json files load one by one and add their cases.
    case_files = [name for name in names if _is_case_file(name)]
    datasets = [name for name in names if name not in case_files]
    sources: list[object] = list(case_files)
    if train_config is not None:
        keys = _training_data_keys(train_config)
        if datasets:
            keys["dataset"] = ",".join(datasets)
        if "dataset" not in keys and not case_files:
            raise TooltuneError(f"{train_config}: no 'dataset' key, and no --data given")
        if "dataset" in keys:
            sources.insert(0, DataArguments(**keys))  # type: ignore[arg-type]
    elif datasets:
        sources.insert(0, ",".join(datasets))
    if answers is not None and len(case_files) > 1:
        raise TooltuneError(f"--answers names one possible_answer file but {len(case_files)} BFCL files are given; "
                            f"keep each file's answers beside it (possible_answer/<same name>) and drop --answers")
    if not sources:
        raise TooltuneError("no cases: give --data (dataset name, .json/.jsonl, BFCL question file) or --train_config")
    cases = []
    for source in sources:
        cases += load_cases(
            source,
            split=split,
            answers=answers,
            val_size=val_size,
            seed=seed,
            dataset_dir=dataset_dir,
            categories=categories,
        )
    if max_cases is not None:
        cases = cases[:max_cases]
    if len(names) > 1:
        typer.echo(f"eval: {len(cases)} cases from {len(names)} sources ({', '.join(names)})", err=True)
    return cases


def run_eval(
    models: list[str],
    data: str | list[str] | None,
    out: Path,
    *,
    dataset_dir: str | None = None,
    answers: str | None = None,
    split: str | None = None,
    val_size: float | None = None,
    seed: int | None = None,
    train_config: Path | None = None,
    max_cases: int | None = None,
    categories: list[str] | None = None,
    chat_template: str | None = None,
    parse: str = "strict",
    max_tokens: int = 256,
    temperature: float = 0.0,
    sampling_seed: int = 0,
    n_ctx: int = 4096,
    plot: bool = True,
    progress: bool = True,
    constrain_calls: bool = True,
) -> None:
    from tooltune.eval import evaluate

    if parse not in PARSE_MODES:
        raise TooltuneError(f"--parse {parse}: expected one of {', '.join(PARSE_MODES)}")
    cases = collect_cases(data, dataset_dir=dataset_dir, answers=answers, split=split, val_size=val_size, seed=seed,
                          train_config=train_config, max_cases=max_cases, categories=categories)
    lenient = "both" if parse == "both" else parse == "lenient"
    evaluate(
        models,
        cases,
        out,
        lenient=lenient,
        max_tokens=max_tokens,
        progress=progress,
        chat_template=chat_template,
        temperature=temperature,
        seed=sampling_seed,
        n_ctx=n_ctx,
        plot=plot,
        constrain_calls=constrain_calls,
    )


def run_compare(before: Path, after: Path, out: Path | None) -> None:
    from tooltune.atomic import write_text
    from tooltune.eval import EvalReport, compare

    text = compare(EvalReport.load(before), EvalReport.load(after))
    typer.echo(text)
    if out is not None:
        target = out / "compare.md" if out.suffix != ".md" else out
        write_text(target, text)


def register(app: typer.Typer) -> None:
    @app.command(
        "eval",
        help="Score tool calling on held-out cases for model files (.gguf, HF dir) and servers (OpenAI/Ollama URL); "
        "writes report.json, report.md and report.png. Or --compare DIR1 DIR2.",
    )
    def eval_command(
        model: list[str] = typer.Option(
            [], "--model", "-m", "--model_name_or_path", "--model-name-or-path",
            help="Model to score: .gguf, HF dir, http://host:port/v1[#model], ollama:http://host:port[#model]. "
            "Repeat to compare runs side by side.",
        ),  # fmt: skip
        data: list[str] = typer.Option(
            [], "--data", "--dataset",
            help="Dataset name (dataset_info.json), .json/.jsonl file, or BFCL file. Repeat or comma-separate to "
            "score several together.",
        ),  # fmt: skip
        out: Path = typer.Option(Path("eval_report"), "--out", "-o", "--output_dir", "--output-dir",
                                 help="Folder for report.json / report.md / report.png."),  # fmt: skip
        dataset_dir: str | None = typer.Option(None, "--dataset_dir", "--dataset-dir", help="dataset_info folder."),
        answers: str | None = typer.Option(None, "--answers", help="BFCL possible_answer file (default: beside it)."),
        split: str | None = typer.Option(
            None, "--split", help="'val': only the held-out part of the val_size split training used."
        ),
        val_size: float | None = typer.Option(None, "--val_size", "--val-size", help="As in training."),
        seed: int | None = typer.Option(None, "--seed", help="Split seed, as in training (default 42)."),
        train_config: Path | None = typer.Option(
            None, "--train_config", "--train-config", help="Training YAML: take dataset, val_size and seed from it."
        ),
        max_cases: int | None = typer.Option(None, "--max_cases", "--max-cases", help="Score only the first N cases."),
        category: list[str] = typer.Option([], "--category", help="Only these categories (repeatable)."),
        chat_template: str | None = typer.Option(
            None, "--chat-template", "--chat_template",
            help="Jinja file or bundled name (qwen) to render prompts for model files instead of the model's own.",
        ),  # fmt: skip
        lenient: bool = typer.Option(False, "--lenient", help="Also accept bare JSON/```json calls."),
        parse: str = typer.Option("strict", "--parse", help="strict | lenient | both (both: two runs per model)."),
        max_tokens: int = typer.Option(
            256, "--max_tokens", "--max-tokens", "--max_new_tokens", "--max-new-tokens", help="Tokens per answer."
        ),
        temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default, deterministic)."),
        sampling_seed: int = typer.Option(0, "--sampling_seed", "--sampling-seed", help="Decoding seed."),
        n_ctx: int = typer.Option(4096, "--n_ctx", "--n-ctx", help="Context length for model files."),
        constrain_calls: bool = typer.Option(
            True, "--constrain-calls/--no-constrain-calls", "--constrain_calls/--no_constrain_calls",
            help="Model files on llama.cpp: a call the model opens is held to the tools' schemas, as `tooltune "
            "serve` serves it; --no-constrain-calls scores calls as the model writes them.",
        ),
        no_plot: bool = typer.Option(False, "--no-plot", "--no_plot", help="Skip report.png."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        compare: tuple[Path, Path] | None = typer.Option(
            None, "--compare", help="Diff two saved runs: --compare DIR_BEFORE DIR_AFTER."
        ),
    ) -> None:
        if compare is not None:
            run_compare(compare[0], compare[1], out if out != Path("eval_report") else None)
            return
        run_eval(
            model,
            data,
            out,
            dataset_dir=dataset_dir,
            answers=answers,
            split=split,
            val_size=val_size,
            seed=seed,
            train_config=train_config,
            max_cases=max_cases,
            categories=category or None,
            chat_template=chat_template,
            parse="lenient" if lenient and parse == "strict" else parse,
            max_tokens=max_tokens,
            temperature=temperature,
            sampling_seed=sampling_seed,
            n_ctx=n_ctx,
            plot=not no_plot,
            progress=not quiet,
            constrain_calls=constrain_calls,
        )
