"""The one error type of the families layer."""

from __future__ import annotations

from tooltune.errors import TooltuneError


class FamilyError(TooltuneError, ValueError):
    """Unknown family or template, or a template that cannot express what the data needs; the message says which."""
