"""report.md from a manifest: intervals, tables, charts, and a report that still renders when stages are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tooltune.pipeline.report import format_rate, render_report, wilson_interval, write_report


def test_wilson_interval_stays_inside_0_1_and_matches_known_values() -> None:
    low, high = wilson_interval(0, 30)
    assert low == 0.0 and high == pytest.approx(0.1135, abs=1e-3)
    low, high = wilson_interval(30, 30)
    assert high == 1.0 and low == pytest.approx(0.8865, abs=1e-3)
    low, high = wilson_interval(20, 30)
    assert low == pytest.approx(0.488, abs=2e-3) and high == pytest.approx(0.808, abs=2e-3)
    assert format_rate(27, 30) == "90% (27/30) [74%–97%]"
    assert format_rate(0, 0) == "-"


def test_eval_chart_at_every_share(tmp_path: Path) -> None:
    """19/19 once gave an upper error bar of -1e-14 from a twin of the interval without exact edges, and matplotlib
    refused the chart — failing the report stage of a finished run. Every hits/cases for small n must draw."""
    from tooltune.pipeline.report import plot_eval

    for cases in (1, 19, 24, 29, 30):
        rows = [{"model": f"m{hits}", "cases": cases, "format_valid": hits, "right_name": hits, "args_match": hits}
                for hits in range(cases + 1)]
        assert plot_eval(rows, tmp_path / f"eval{cases}.png")
    assert plot_eval([{"model": "none", "cases": 0}], tmp_path / "empty.png")


CALL_TEXT = '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 100}}\n</tool_call>'


def manifest() -> dict:
    rows_eval = [
        {"model": "base", "cases": 30, "format_valid": 3, "right_name": 1, "args_match": 0, "tokens_per_second": 88.0},
        {"model": "tuned f16", "cases": 30, "format_valid": 29, "right_name": 26, "args_match": 14},
    ]
    return {
        "config": {"config_file": "demo.yaml", "dataset": "glaive_toolcall_en_demo", "template": "qwen"},
        "versions": {"tooltune": "0.1.0", "torch": "2.13.0"},
        "stages": {
            "train": {
                "status": "done",
                "wall_seconds": 301.5,
                "peak_rss_bytes": 1_500_000_000,
                "summary": "40 steps, loss 0.41",
                "metrics": {"plan": ["steps  40 total"], "loss": [[1, 2.0], [2, 1.5], [3, 0.9]], "figures": {}},
            },
            "gguf": {
                "status": "done",
                "wall_seconds": 4.0,
                "peak_rss_bytes": 700_000_000,
                "metrics": {"files": [{"name": "model-f16.gguf", "type": "F16", "bytes": 270e6, "label": "tuned f16"}]},
            },
            "eval": {
                "status": "done",
                "wall_seconds": 60.0,
                "metrics": {
                    "rows": rows_eval,
                    "sample": {
                        "model": "tuned f16",
                        "case": "glaive_toolcall_en_demo.json#7@3",
                        "messages": [{"role": "user", "content": "Convert 100 USD to EUR"}],
                        "output": CALL_TEXT,
                        "tool_calls": [{"name": "convert_currency", "arguments": {"amount": 100}}],
                        "expected": [{"name": "convert_currency", "arguments": {"amount": 100}}],
                    },
                },
            },
            "quantize": {"status": "failed", "wall_seconds": 1.0, "error": "stage 'quantize' failed: boom"},
        },
    }


def test_report_has_stage_eval_and_gguf_tables_and_charts(tmp_path: Path) -> None:
    out = write_report(manifest(), tmp_path)
    text = out.read_text()
    assert "| train | done | 301.5 s | 1.40 GB | 40 steps, loss 0.41 |" in text
    assert "| quantize | failed | 1.0 s | - | stage 'quantize' failed: boom |" in text
    assert "| tuned f16 | 30 | 97% (29/30) [83%–99%] | 87% (26/30) [70%–95%] |" in text
    assert "| `model-f16.gguf` | F16 | 257 MB | 87% (26/30) [70%–95%] |" in text
    assert "user: Convert 100 USD to EUR" in text and '"name": "convert_currency"' in text
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert "constrained calls" not in text  # a run recorded before the setting existed says nothing about it


@pytest.mark.parametrize("constrained", [True, False])
def test_report_says_whether_calls_were_held_to_the_schema(tmp_path: Path, constrained: bool) -> None:
    recorded = manifest()
    recorded["stages"]["eval"]["metrics"]["constrained_calls"] = constrained
    text = write_report(recorded, tmp_path).read_text()
    assert ("held to the tools' schemas (constrained calls" in text) is constrained
    assert ("Calls scored as the model writes them" in text) is not constrained


def test_report_names_call_turns_cut_by_the_token_budget(tmp_path: Path) -> None:
    recorded = manifest()
    recorded["stages"]["eval"]["metrics"]["cut_short"] = "- **tuned f16**: 1 call turns scored wrong ended at ..."
    text = write_report(recorded, tmp_path).read_text()
    assert "Cut short (base vs tuned):\n\n- **tuned f16**: 1 call turns scored wrong" in text
    assert "Cut short" not in write_report(manifest(), tmp_path).read_text()


def test_report_renders_with_nothing_but_a_failed_stage(tmp_path: Path) -> None:
    text = render_report(
        {"stages": {"preview": {"status": "failed", "error": "data.json record 3: bad role"}}}, tmp_path
    )
    assert "data.json record 3: bad role" in text
    assert "## Tool-calling accuracy" not in text


def test_report_sets_base_plus_adapter_next_to_the_merged_file_of_the_same_type(tmp_path: Path) -> None:
    def row(model: str, name: int, args: int, speed: float) -> dict:
        return {"model": model, "cases": 20, "format_valid": 20, "right_name": name, "args_match": args,
                "tokens_per_second": speed}

    mib = 2**20
    stages = {
        "gguf": {"status": "done", "metrics": {"files": [{"name": "model-f16.gguf", "type": "F16", "bytes": 258 * mib,
                                                          "label": "tuned f16"}]}},
        "quantize": {"status": "done", "metrics": {"files": [{"name": "model-Q4_K_M.gguf", "type": "Q4_K_M",
                                                              "bytes": 101 * mib, "label": "tuned Q4_K_M"}]}},
        "eval": {"status": "done", "metrics": {"rows": [row("tuned f16", 18, 12, 60.0)]}},
        "eval_quants": {"status": "done", "metrics": {"rows": [row("tuned Q4_K_M", 17, 11, 80.0)]}},
        "adapter_gguf": {"status": "done", "metrics": {
            "files": [{"name": "base-f16.gguf", "type": "F16", "bytes": 258 * mib},
                      {"name": "base-Q4_K_M.gguf", "type": "Q4_K_M", "bytes": 100 * mib},
                      {"name": "adapter-f16.gguf", "type": "LoRA F16", "bytes": 9 * mib}],
            "rows": [row("adapter + base F16", 18, 12, 45.0), row("adapter + base Q4_K_M", 16, 11, 62.0)],
            "compare": [
                {"type": "F16", "adapter_row": "adapter + base F16", "merged_row": "tuned f16",
                 "base_bytes": 258 * mib, "adapter_bytes": 9 * mib},
                {"type": "Q4_K_M", "adapter_row": "adapter + base Q4_K_M", "merged_row": "tuned Q4_K_M",
                 "base_bytes": 100 * mib, "adapter_bytes": 9 * mib},
            ],
            "path": "run/adapter_gguf/Modelfile", "name": "toolcall", "text": "FROM base\nADAPTER adapter",
            "serve": "tooltune serve base --lora toolcall=adapter"}},
    }
    text = render_report({"stages": stages}, tmp_path)
    section = text[text.index("## Adapter (unmerged)"):]
    assert "| type | shipped as | right function | right arguments | tok/s | size | each more |" in section
    assert "| F16 | merged | 90% (18/20) [70%–97%] | 60% (12/20) [39%–78%] | 60 | 258 MB | 258 MB |" in section
    assert "| F16 | base + adapter | 90% (18/20) [70%–97%] | 60% (12/20) [39%–78%] | 45 | 267 MB | 9 MB |" in section
    assert "| Q4_K_M | merged | 85% (17/20) [64%–95%] | 55% (11/20) [34%–74%] | 80 | 101 MB | 101 MB |" in section
    assert "| Q4_K_M | base + adapter | 80% (16/20) [58%–92%] | 55% (11/20) [34%–74%] | 62 | 109 MB | 9 MB |" in section
    # A run recorded before the comparison existed (no "compare") still renders its adapter files.
    del stages["adapter_gguf"]["metrics"]["compare"]
    assert "shipped as" not in render_report({"stages": stages}, tmp_path)
