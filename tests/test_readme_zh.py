"""README.zh-CN.md stays in step with README.md: the same commands in the same order, the same seed-step table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
TRAILING_COMMENT = re.compile(r"\s+#\s.*$")  # ' # note' ends a command; 'url#name' does not


def commands(markdown: str) -> list[str]:
    """Every command of every code block, continuation lines joined, comments (which get translated) dropped."""
    found = []
    for _, body in FENCE.findall(markdown):
        for line in body.replace("\\\n", " ").splitlines():
            line = TRAILING_COMMENT.sub("", line).strip()
            if line and not line.startswith("#"):
                found.append(" ".join(line.split()))
    return found


def table_code(markdown: str) -> list[list[str]]:
    """The `code` of each row of the tables whose rows are commands (the seed-step table)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|") and "`" in line]
    return [re.findall(r"`([^`]+)`", row) for row in rows]


def test_chinese_readme_has_every_command_block_of_the_english_one() -> None:
    english = (ROOT / "README.md").read_text(encoding="utf-8")
    chinese = (ROOT / "README.zh-CN.md").read_text(encoding="utf-8")
    assert len(FENCE.findall(english)) == len(FENCE.findall(chinese))
    assert commands(chinese) == commands(english)
    assert len(commands(english)) > 30
    assert table_code(chinese) == table_code(english)
    # Linked from the top of both.
    assert "(README.zh-CN.md)" in english.split("\n## ")[0]
    assert "(README.md)" in chinese.split("\n## ")[0]
    # Written in Chinese, with the seed guide's terms.
    for term in ("模型测试", "模型合并", "量化", "微调", "部署", "快速开始"):
        assert term in chinese, term
