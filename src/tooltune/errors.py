"""Errors a user can act on. The CLI prints them as one line (file, record, reason) without a traceback."""


class TooltuneError(Exception):
    """Base for every error tooltune raises on purpose."""
