"""``tooltune eval``: score tool calling of model files and running servers on the same cases, or compare two runs."""

from __future__ import annotations

from pathlib import Path

import typer

from tooltune.errors import TooltuneError

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


def run_eval(
    models: list[str],
    data: str | None,
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
) -> None:
    from tooltune.data.args import DataArguments
    from tooltune.eval import evaluate, load_cases

    if parse not in PARSE_MODES:
        raise TooltuneError(f"--parse {parse}: expected one of {', '.join(PARSE_MODES)}")
    source: object = data
    if train_config is not None:
        keys = _training_data_keys(train_config)
        if data is not None:
            keys["dataset"] = data
        if "dataset" not in keys:
            raise TooltuneError(f"{train_config}: no 'dataset' key, and no --data given")
        source = DataArguments(**keys)  # type: ignore[arg-type]
    if source is None:
        raise TooltuneError("no cases: give --data (dataset name, .json/.jsonl, BFCL question file) or --train_config")
    cases = load_cases(
        source,
        split=split,
        answers=answers,
        val_size=val_size,
        seed=seed,
        dataset_dir=dataset_dir,
        categories=categories,
        max_cases=max_cases,
    )
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
        data: str | None = typer.Option(
            None, "--data", "--dataset", help="Dataset name (dataset_info.json), .json/.jsonl file, or BFCL file."
        ),
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
        )
