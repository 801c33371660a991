"""Tool-calling evaluation: cases → targets → BFCL AST scoring → report.

Pipeline entry points: ``load_cases(data_args_or_path, split=None|"val")`` and
``evaluate(targets, cases, out_dir, lenient=False, max_tokens=256, progress=True) -> EvalReport``.
"""

from tooltune.eval.cases import Case, CaseError, load_bfcl, load_cases
from tooltune.eval.report import EvalReport, RunResult, compare
from tooltune.eval.runner import evaluate

__all__ = ["Case", "CaseError", "EvalReport", "RunResult", "compare", "evaluate", "load_bfcl", "load_cases"]
