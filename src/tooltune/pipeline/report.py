"""``report.md`` (and its PNGs) for a run, built only from the manifest so it can be regenerated at any time.

Each stage leaves JSON figures in its manifest record (``metrics``); this module turns them into the tables a user
reads: the training plan and loss curve, base vs tuned vs each quant with 95% intervals, the GGUF files, the
Modelfile, how to serve it, a sample tool call, and every stage's wall time and peak memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tooltune.atomic import atomic_path, write_text
from tooltune.eval.metrics import wilson_interval  # the one interval eval and the report share
from tooltune.pipeline.memory import format_bytes

REPORT_NAME = "report.md"
LOSS_PNG = "loss.png"
EVAL_PNG = "eval.png"
EVAL_COLUMNS = (("format_valid", "format-valid"), ("right_name", "right function"), ("args_match", "right arguments"))


def format_rate(successes: int, total: int) -> str:
    if total <= 0:
        return "-"
    low, high = wilson_interval(successes, total)
    return f"{successes / total:.0%} ({successes}/{total}) [{low:.0%}–{high:.0%}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def eval_rows(stages: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in ("eval", "eval_quants", "adapter_gguf"):  # adapter_gguf: the same model unmerged, next to merged
        rows += stages.get(name, {}).get("metrics", {}).get("rows", [])
    return rows


def _constraint_note(constrained: bool | None) -> str:
    if constrained is None:  # a run recorded before the setting existed
        return ""
    if constrained:
        return (" Decoded as `tooltune serve` answers: once a model opens a call, the call is held to the tools' "
                "schemas (constrained calls, docs/serve.md); `eval_constrain_calls: false` scores calls as written.")
    return " Calls scored as the model writes them (`eval_constrain_calls: false`)."


def plot_loss(points: list[list[float]], out: Path) -> bool:
    if len(points) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; never pick an interactive backend
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def plot_eval(rows: list[dict[str, Any]], out: Path) -> bool:
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    width = 0.8 / len(EVAL_COLUMNS)
    for offset, (key, label) in enumerate(EVAL_COLUMNS):
        xs, values, errors = [], [], [[], []]
        for i, row in enumerate(rows):
            total, hits = row.get("cases", 0), row.get(key, 0)
            rate = hits / total if total else 0.0
            low, high = wilson_interval(hits, total)
            xs.append(i + (offset - 1) * width)
            values.append(rate * 100)
            errors[0].append((rate - low) * 100)
            errors[1].append((high - rate) * 100)
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(range(len(rows)), [row["model"] for row in rows], fontsize=8)
    ax.set_ylabel("% of held-out cases")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def adapter_comparison(stages: dict[str, Any]) -> list[list[str]]:
    """Rows of the adapter-vs-merged table: per type, the merged file's eval row and size, then base + adapter's."""
    compare = _metrics(stages, "adapter_gguf").get("compare", [])
    by_model = {row.get("model"): row for row in eval_rows(stages)}
    merged_files = {f.get("label"): f for name in ("gguf", "quantize") for f in _metrics(stages, name).get("files", [])}
    rows: list[list[str]] = []
    for pair in compare:
        merged_bytes = merged_files.get(pair.get("merged_row"), {}).get("bytes")
        adapter_bytes = pair.get("adapter_bytes")
        both = (pair.get("base_bytes") or 0) + (adapter_bytes or 0) if adapter_bytes else None
        for shipped, row_name, size, more in (("merged", pair.get("merged_row"), merged_bytes, merged_bytes),
                                              ("base + adapter", pair.get("adapter_row"), both, adapter_bytes)):
            row = by_model.get(row_name, {})
            cases = row.get("cases", 0)
            speed = row.get("tokens_per_second")
            rows.append([str(pair.get("type", "")), shipped,
                         format_rate(row.get("right_name", 0), cases) if row else "-",
                         format_rate(row.get("args_match", 0), cases) if row else "-",
                         f"{speed:.0f}" if speed else "-", format_bytes(size), format_bytes(more)])
    return rows


def _metrics(stages: dict[str, Any], name: str) -> dict[str, Any]:
    return stages.get(name, {}).get("metrics", {}) or {}


def backend_check_lines(check: dict[str, Any]) -> list[str]:
    """`tooltune check-backends`' table: does every backend render the training text and read the same calls."""
    if not check:
        return []
    lines = ["## One check across backends", "",
             "Training render vs the model folder's template (HF, vLLM), the GGUF's and the Modelfile TEMPLATE (Go "
             "`text/template`, as Ollama), and the same calls read by every parser path "
             "(`tooltune check-backends`; docs/families.md):", ""]
    lines += _table(check["header"], check["rows"])
    lines += ["", *[f"- {name}: {source}" for name, source in check.get("sources", {}).items()]]
    if check.get("details"):
        lines += ["", "```", *check["details"], "```"]
    lines += ["", f"**{check['summary']}**", ""]
    return lines


def render_report(manifest: dict[str, Any], run_dir: Path, report_stage: str = "report") -> str:
    stages: dict[str, Any] = manifest.get("stages", {})
    config: dict[str, Any] = manifest.get("config", {})
    versions: dict[str, str] = manifest.get("versions", {})
    lines: list[str] = [f"# tooltune run: {run_dir.name}", ""]
    model = config.get("model_name_or_path") or "embedded SmolLM2-135M-Instruct"
    lines.append(
        f"Config `{config.get('config_file') or '(command line)'}` · model `{model}`"
        f" · dataset `{config.get('dataset')}` · template `{config.get('template')}` · written "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform"))
    lines.append("")

    lines += ["## Stages", ""]
    rows = []
    total_wall = 0.0
    for name, record in stages.items():
        if name == report_stage:
            continue
        wall = record.get("wall_seconds")
        total_wall += wall or 0.0
        rows.append(
            [
                name,
                record.get("status", "?"),
                f"{wall:.1f} s" if wall is not None else "-",
                format_bytes(record.get("peak_rss_bytes")),
                record.get("summary") or record.get("error") or "",
            ]
        )
    lines += _table(["stage", "status", "wall time", "peak memory (RSS)", "summary"], rows)
    lines += ["", f"Total wall time of the stages above: {total_wall:.1f} s (last completed run of each stage).", ""]

    preview = _metrics(stages, "preview")
    if preview:
        lines += ["## Data", ""]
        lines.append(preview.get("summary_line", ""))
        if preview.get("sample_text"):
            lines += ["", "First training sample as the model sees it (trained tokens are the assistant turns):", ""]
            lines += ["```text", preview["sample_text"].rstrip(), "```"]
        lines.append("")

    train = _metrics(stages, "train")
    if train:
        lines += ["## Training", ""]
        if train.get("plan"):
            lines += ["```text", *train["plan"], "```", ""]
        if train.get("resumed_from"):
            lines += [f"Resumed from `{train['resumed_from']}` after an interruption.", ""]
        figures = train.get("figures", {})
        shown = [
            f"{label} {figures[key]:{fmt}}"
            for key, label, fmt in (
                ("train_runtime", "train time (s)", ".1f"),
                ("train_loss", "mean train loss", ".4f"),
                ("eval_loss", "held-out loss", ".4f"),
                ("epoch", "epochs", ".2f"),
            )
            if isinstance(figures.get(key), (int, float))
        ]
        if shown:
            lines += [" · ".join(shown), ""]
        if plot_loss(train.get("loss", []), run_dir / LOSS_PNG):
            lines += [f"![training loss]({LOSS_PNG})", ""]

    rows_eval = eval_rows(stages)
    if rows_eval:
        lines += ["## Tool-calling accuracy (held-out cases)", ""]
        lines.append(
            "Over the held-out turns whose reference answer is a tool call. Each cell: share, (hits/cases), "
            "[95% Wilson interval]. *format-valid*: the reply holds a well-formed tool call (parses, no broken "
            "block); *right function*: the called names match; *right arguments*: name and arguments match by "
            "BFCL's AST rules."
            + _constraint_note(stages.get("eval", {}).get("metrics", {}).get("constrained_calls"))
        )
        lines.append("")
        table_rows = []
        for row in rows_eval:
            cells = [row["model"], str(row.get("cases", 0))]
            cells += [format_rate(row.get(key, 0), row.get("cases", 0)) for key, _ in EVAL_COLUMNS]
            speed = row.get("tokens_per_second")
            cells.append(f"{speed:.0f}" if speed else "-")
            table_rows.append(cells)
        lines += _table(["model", "call turns", *(label for _, label in EVAL_COLUMNS), "tok/s"], table_rows)
        lines.append("")
        if plot_eval(rows_eval, run_dir / EVAL_PNG):
            lines += [f"![eval]({EVAL_PNG})", ""]
        for name, title in (("eval", "base vs tuned"), ("eval_quants", "quantized files")):
            table = _metrics(stages, name).get("table")
            if table:
                lines += [f"All metrics, {title} (every held-out turn; `{name}/report.md` lists the failures):", ""]
                lines += [table, ""]
            cut = _metrics(stages, name).get("cut_short")
            if cut:
                lines += [f"Cut short ({title}):", "", cut, ""]

    quant = _metrics(stages, "quantize")
    gguf = _metrics(stages, "gguf")
    files = list(gguf.get("files", [])) + list(quant.get("files", []))
    if files:
        lines += ["## GGUF files", ""]
        by_model = {row.get("model"): row for row in rows_eval}
        table_rows = []
        for item in files:
            row = by_model.get(item.get("label"), {})
            cases = row.get("cases", 0)
            quality = format_rate(row.get("right_name", 0), cases) if cases else "-"
            table_rows.append([f"`{item['name']}`", item.get("type", ""), format_bytes(item.get("bytes")), quality])
        lines += _table(["file", "type", "size", "right function (eval)"], table_rows)
        if quant.get("report"):
            lines += ["", "Quality of each file against the first on the same text (from `tooltune gguf-report`):", ""]
            lines.append(str(quant["report"]).rstrip())
        lines.append("")

    modelfile = _metrics(stages, "modelfile")
    if modelfile:
        name = modelfile.get("name", "toolcall")
        lines += ["## Modelfile", "", f"`{modelfile.get('path')}`:", "", "```dockerfile"]
        lines += [str(modelfile.get("text", "")).rstrip(), "```", ""]
        lines += [f"**Warning:** {warning}" for warning in modelfile.get("warnings", [])]
        lines += backend_check_lines(modelfile.get("backend_check") or {})
        lines += ["## Serve it", "", "```bash"]
        lines.append(f"tooltune serve {modelfile.get('gguf')} --name {name}   # Ollama API + OpenAI API on 127.0.0.1")
        lines.append(f"ollama create {name} -f {modelfile.get('path')}            # or with a real Ollama")
        lines.append(
            f'curl http://localhost:11434/api/chat -d \'{{"model": "{name}", "stream": false, '
            f'"messages": [{{"role": "user", "content": "..."}}], "tools": [...]}}\''
        )
        lines += ["```", ""]

    unmerged = _metrics(stages, "adapter_gguf")
    if unmerged:
        # The other way to ship the same fine-tune: the base once, then a few MiB per tool set.
        lines += ["## Adapter (unmerged)", ""]
        rows = [[f"`{f['name']}`", str(f.get("type", "")), format_bytes(f.get("bytes"))]
                for f in unmerged.get("files", [])]
        lines += _table(["file", "type", "size"], rows)
        compare = adapter_comparison(stages)
        if compare:
            lines += ["", "The same fine-tune shipped both ways, scored on the same held-out cases (eval stages): the "
                      "merged file, and its base of the same type with the LoRA applied by llama.cpp at run time "
                      "(what `tooltune serve --lora` and Ollama's `ADAPTER` do). *tok/s*: decode speed during eval; "
                      "*size*: what a first tool set ships; *each more*: what every further tool set adds.", ""]
            lines += _table(["type", "shipped as", "right function", "right arguments", "tok/s", "size", "each more"],
                            compare)
        lines += ["", f"`{unmerged.get('path')}`:", "", "```dockerfile", str(unmerged.get("text", "")).rstrip(), "```",
                  "", "```bash", f"{unmerged.get('serve')}   # base and adapter, one process, both APIs",
                  f"ollama create {unmerged.get('name')} -f {unmerged.get('path')}", "```", ""]

    sample = _metrics(stages, "eval").get("sample") or _metrics(stages, "eval_quants").get("sample")
    if sample:
        lines += ["## Sample conversation", ""]
        lines.append(f"Model `{sample.get('model')}`, held-out case {sample.get('case')}:")
        lines += ["", "```text"]
        for message in sample.get("messages", []):
            lines.append(f"{message.get('role')}: {message.get('content')}")
        lines.append(f"assistant (raw): {sample.get('output', '').strip()}")
        lines += ["```", "", "Parsed tool call:", "", "```json"]
        lines += [json.dumps(sample.get("tool_calls"), ensure_ascii=False, indent=2), "```"]
        if sample.get("expected") is not None:
            lines += ["", "Expected:", "", "```json", json.dumps(sample["expected"], ensure_ascii=False, indent=2)]
            lines.append("```")
        lines.append("")
    return "\n".join(lines)


def write_report(manifest: dict[str, Any], run_dir: Path) -> Path:
    out = run_dir / REPORT_NAME
    write_text(out, render_report(manifest, run_dir))
    return out
