"""The evaluation report: ``report.json`` (everything, per case), ``report.md`` (one table, runs side by side, best in
bold, per-category accuracy, worst failures) and ``report.png`` (grouped bars with 95% intervals); and ``compare``
for two saved reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune.atomic import atomic_path, write_text
from tooltune.errors import TooltuneError
from tooltune.eval.metrics import Rate
from tooltune.eval.scoring import METRIC_BY_KEY, METRICS, CaseScore, RunSummary, failure_rank, summarize

REPORT_VERSION = 1
PLOTTED = ("accuracy", "decision", "name", "arguments_ast", "arguments_exact", "no_call", "parsed")
FAILURES_SHOWN = 5


@dataclass
class RunResult:
    label: str  # unique within a report, e.g. "model.gguf" or "model.gguf (lenient)"
    target: str  # the --model spec
    kind: str  # gguf | hf | openai | ollama
    parse_mode: str  # strict | lenient
    scores: list[CaseScore]
    seconds: float = 0.0
    summary: RunSummary = field(init=False)

    def __post_init__(self) -> None:
        self.summary = summarize(self.scores)

    @property
    def cut_short(self) -> list[CaseScore]:
        return [score for score in self.scores if score.cut_short]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "target": self.target,
            "kind": self.kind,
            "parse_mode": self.parse_mode,
            "seconds": self.seconds,
            "metrics": {k: r.to_dict() for k, r in self.summary.metrics.items()},
            "by_category": {
                category: {key: r.to_dict() for key, r in rates.items()}
                for category, rates in self.summary.by_category.items()
            },
            "latency": self.summary.latency,
            "tokens_per_second": self.summary.tokens_per_second,
            "cut_short": [s.case_id for s in self.cut_short],
            "cases": [s.to_dict() for s in self.scores],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunResult:
        return cls(
            label=raw["label"],
            target=raw["target"],
            kind=raw["kind"],
            parse_mode=raw["parse_mode"],
            scores=[CaseScore.from_dict(c) for c in raw["cases"]],
            seconds=raw.get("seconds", 0.0),
        )


@dataclass
class EvalReport:
    runs: list[RunResult]
    n_cases: int
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    # ---- serialisation ----

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "created": self.created,
            "n_cases": self.n_cases,
            "settings": self.settings,
            "runs": [run.to_dict() for run in self.runs],
        }

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        path = Path(path)
        if path.is_dir():
            path = path / "report.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TooltuneError(f"{path}: no saved evaluation report there") from None
        except json.JSONDecodeError as exc:
            raise TooltuneError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if raw.get("version") != REPORT_VERSION:
            raise TooltuneError(f"{path}: report version {raw.get('version')!r}, expected {REPORT_VERSION}")
        return cls(
            runs=[RunResult.from_dict(r) for r in raw["runs"]],
            n_cases=raw["n_cases"],
            settings=raw.get("settings", {}),
            created=raw.get("created", ""),
        )

    def write(self, out_dir: str | Path, plot: bool = True) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [out_dir / "report.json", out_dir / "report.md"]
        write_text(written[0], json.dumps(self.to_dict(), ensure_ascii=False, indent=1))
        write_text(written[1], self.markdown())
        if plot:
            written.append(out_dir / "report.png")
            write_plot(self, written[-1])
        return written

    # ---- views ----

    def table_markdown(self) -> str:
        """One table: metrics as rows, runs side by side, the best run of each row in bold."""
        header = "| metric | " + " | ".join(_escape(r.label) for r in self.runs) + " |"
        lines = [header, "|---|" + "---|" * len(self.runs)]
        for metric in METRICS:
            rates = [run.summary.metrics[metric.key] for run in self.runs]
            best = _best_index(rates, metric.lower_is_better)
            arrow = " ↓" if metric.lower_is_better else ""
            cells = [_cell(r, bold=(i in best)) for i, r in enumerate(rates)]
            lines.append(f"| {metric.title}{arrow} | " + " | ".join(cells) + " |")
        latency = [run.summary.latency.get("mean_s") for run in self.runs]
        lines.append("| mean latency per case | " + " | ".join(_seconds(v) for v in latency) + " |")
        speed = [run.summary.tokens_per_second for run in self.runs]
        cells = " | ".join(f"{v:.1f}" if v else "–" for v in speed)
        lines.append(f"| output tokens/s (end to end) | {cells} |")
        return "\n".join(lines)

    def category_markdown(self, metric: str = "accuracy") -> str:
        """One metric per category (report.json holds every metric per category)."""
        categories = sorted({c for run in self.runs for c in run.summary.by_category})
        lines = ["| category | " + " | ".join(_escape(r.label) for r in self.runs) + " |"]
        lines.append("|---|" + "---|" * len(self.runs))
        empty = Rate(0, 0, 0.0, 1.0)
        for category in categories:
            rates = [run.summary.by_category.get(category, {}).get(metric, empty) for run in self.runs]
            best = _best_index(rates, False)
            lines.append(f"| {category} | " + " | ".join(_cell(r, i in best) for i, r in enumerate(rates)) + " |")
        return "\n".join(lines)

    def failures_markdown(self, limit: int = FAILURES_SHOWN) -> str:
        parts = []
        for run in self.runs:
            failed = sorted((s for s in run.scores if not s.correct), key=failure_rank)
            parts.append(f"### {_escape(run.label)}: {len(failed)} of {len(run.scores)} cases wrong\n")
            for score in failed[:limit]:
                if score.expected_calls:
                    expected = json.dumps(score.expected_calls, ensure_ascii=False)
                else:
                    reference = f" (reference text: {_clip(score.expected_text, 120)!r})" if score.expected_text else ""
                    expected = "no call" + reference
                cut = " (ended at max_tokens)" if score.cut_short else ""
                parts.append(
                    f"- **{_escape(score.case_id)}** ({score.category}) — {score.verdict or 'wrong'}{cut}\n"
                    f"  - prompt: {_clip(score.prompt_preview, 200)!r}\n"
                    f"  - expected: {_clip(expected, 300)}\n"
                    f"  - actual calls: {_clip(json.dumps(score.calls, ensure_ascii=False), 300)}\n"
                    f"  - raw output: {_clip(score.output, 300)!r}"
                    + (f"\n  - errors: {_clip('; '.join(score.errors), 300)}" if score.errors else "")
                )
            parts.append("")
        return "\n".join(parts)

    def markdown(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return (
            f"# Tool-calling evaluation\n\n{self.n_cases} cases; {settings}. Each rate: value, 95% Wilson interval, "
            f"n (the cases it applies to). Best per row in **bold**; ↓ = lower is better.\n\n"
            f"{self.table_markdown()}\n\n"
            + (f"Cut short:\n\n{cut}\n\n" if (cut := self.cut_short_markdown()) else "")
            + f"## Accuracy by category\n\n{self.category_markdown()}\n\n"
            f"## Worst failures\n\n{self.failures_markdown()}"
        )

    def summary_line(self) -> str:
        budget = f" at max_tokens {self.settings['max_tokens']}" if "max_tokens" in self.settings else ""
        parts = []
        for run in self.runs:
            acc = run.summary.metrics["accuracy"]
            cut = run.cut_short
            parts.append(f"{run.label}: {acc.format()}" + (f", {len(cut)} wrong call turns cut{budget}" if cut else ""))
        return f"{self.n_cases} cases — " + "; ".join(parts)

    def cut_short_markdown(self) -> str:
        """A warning per run whose wrong call turns ended on the token budget (empty when none did)."""
        budget = self.settings.get("max_tokens", "the")
        lines = []
        for run in self.runs:
            if cut := run.cut_short:
                lines.append(f"- **{_escape(run.label)}**: {len(cut)} call turns scored wrong ended at the max_tokens "
                             f"budget ({budget}): {', '.join(_escape(s.case_id) for s in cut)} — raise max_tokens to "
                             "score what the model would have answered")
        return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _clip(text: str, limit: int) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Rate, bold: bool) -> str:
    text = value.format()
    return f"**{text}**" if bold and value.n else text


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _best_index(rates: list[Rate], lower_is_better: bool) -> set[int]:
    """Indices of the best rate (ties all bold); none when only one run or nothing is measured."""
    measured = [(r.hits / r.n, i) for i, r in enumerate(rates) if r.n]
    if len(rates) < 2 or not measured:
        return set()
    target = min(v for v, _ in measured) if lower_is_better else max(v for v, _ in measured)
    best = {i for v, i in measured if v == target}
    return set() if len(best) == len(rates) else best  # a row where every run ties has no winner


def write_plot(report: EvalReport, path: Path) -> None:
    """Grouped bars: one group per metric, one bar per run, whiskers at the 95% Wilson interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in PLOTTED if any(run.summary.metrics[k].n for run in report.runs)]
    width = 0.8 / max(1, len(report.runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(keys) * max(1, len(report.runs)) ** 0.5), 4.2))
    for index, run in enumerate(report.runs):
        rates = [run.summary.metrics[k] for k in keys]
        values = [100 * (r.value or 0.0) for r in rates]
        below = [v - 100 * r.low if r.n else 0 for v, r in zip(values, rates, strict=True)]
        above = [100 * r.high - v if r.n else 0 for v, r in zip(values, rates, strict=True)]
        positions = [k + (index - (len(report.runs) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(positions, values, width, yerr=[below, above], capsize=3, label=run.label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([METRIC_BY_KEY[k].title for k in keys], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("% of applicable cases (95% Wilson interval)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Tool-calling evaluation ({report.n_cases} cases)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def compare(before: EvalReport, after: EvalReport) -> str:
    """Markdown diff of two saved reports: each metric per run pair, and the cases whose verdict flipped."""
    pairs = _pair_runs(before.runs, after.runs)
    lines = ["| metric | run | before | after | change |", "|---|---|---|---|---|"]
    for metric in METRICS:
        for old, new in pairs:
            a, b = old.summary.metrics[metric.key], new.summary.metrics[metric.key]
            if not a.n and not b.n:
                continue
            delta = "–" if a.value is None or b.value is None else f"{100 * (b.value - a.value):+.1f} pts"
            label = old.label if old.label == new.label else f"{old.label} → {new.label}"
            lines.append(f"| {metric.title} | {_escape(label)} | {a.format()} | {b.format()} | {delta} |")
    out = ["# Evaluation comparison\n", "\n".join(lines), ""]
    for old, new in pairs:
        old_ok = {s.case_id: s.correct for s in old.scores}
        new_ok = {s.case_id: s.correct for s in new.scores}
        shared = [cid for cid in new_ok if cid in old_ok]
        fixed = [cid for cid in shared if new_ok[cid] and not old_ok[cid]]
        broken = [cid for cid in shared if old_ok[cid] and not new_ok[cid]]
        out.append(
            f"**{_escape(old.label)} → {_escape(new.label)}**: {len(shared)} shared cases, "
            f"{len(fixed)} now right, {len(broken)} now wrong."
        )
        if fixed:
            out.append("- now right: " + ", ".join(fixed[:20]) + (" …" if len(fixed) > 20 else ""))
        if broken:
            out.append("- now wrong: " + ", ".join(broken[:20]) + (" …" if len(broken) > 20 else ""))
        out.append("")
    return "\n".join(out)


def _pair_runs(before: list[RunResult], after: list[RunResult]) -> list[tuple[RunResult, RunResult]]:
    """Runs with the same label pair up; otherwise by position (e.g. base model before vs tuned model after)."""
    by_label = {r.label: r for r in before}
    if all(r.label in by_label for r in after):
        return [(by_label[r.label], r) for r in after]
    return list(zip(before, after, strict=False))
