"""``tooltune eval --data A --data B`` (or ``--data A,B``) scores every dataset given; none is dropped silently."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tooltune.commands.eval import collect_cases, data_sources
from tooltune.errors import TooltuneError

BFCL = Path(__file__).parent / "fixtures" / "bfcl"
EN, ZH = "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"


def test_repeated_and_comma_sources_are_all_kept() -> None:
    assert data_sources([EN, ZH]) == [EN, ZH]
    assert data_sources([f"{EN}, {ZH}"]) == [EN, ZH]
    assert data_sources(EN) == [EN]
    with pytest.raises(TooltuneError, match="given twice"):
        data_sources([EN, f"{ZH},{EN}"])


def test_every_dataset_contributes_its_cases() -> None:
    en, zh = collect_cases(EN), collect_cases(ZH)
    both = collect_cases([EN, ZH])
    assert len(both) == len(en) + len(zh)
    assert {c.source.split(" ")[0] for c in both} >= {c.source.split(" ")[0] for c in en + zh}
    # Dataset names and BFCL files mix: the BFCL cases are added, not swapped for the dataset's.
    bfcl = str(BFCL / "BFCL_v4_simple_python.json")
    mixed = collect_cases([EN, bfcl, str(BFCL / "BFCL_v4_irrelevance.json")])
    assert len(mixed) == len(en) + len(collect_cases(bfcl)) + len(collect_cases(str(BFCL / "BFCL_v4_irrelevance.json")))
    assert collect_cases([EN, ZH], max_cases=5) == both[:5]
    with pytest.raises(TooltuneError, match="--answers names one"):
        collect_cases([bfcl, str(BFCL / "BFCL_v4_irrelevance.json")], answers="x.json")


def test_cli_repeated_data_reaches_the_loader() -> None:
    """Through the real CLI: both --data values are loaded (the run then stops at the unreachable model)."""
    from tooltune.cli import app

    result = CliRunner().invoke(app, ["eval", "--data", EN, "--data", ZH, "--model", "http://127.0.0.1:9/v1",
                                      "--quiet", "--no-plot"])
    text = result.output + (result.stderr if hasattr(result, "stderr") else "")
    expected = len(collect_cases([EN, ZH]))
    assert f"eval: {expected} cases from 2 sources ({EN}, {ZH})" in text
    assert result.exit_code != 0
