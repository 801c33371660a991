"""``tooltune ui``: a browser face on the CLI's pieces — the data as training sees it, the runs, a run form and a
tool-calling playground. One FastAPI router (``tooltune.ui.app.build_router``) serves it from ``tooltune ui`` and
from ``tooltune serve``; the pages are static HTML + plain JavaScript, so nothing is built at install time."""

from tooltune.ui.app import create_ui_app, mount_on_serve

__all__ = ["create_ui_app", "mount_on_serve"]
