"""Where Dendrite keeps its files and which database it talks to.

Resolution order for the database URL: the explicit argument, then
``DENDRITE_DATABASE_URL``, then a SQLite file ``dendrite.db`` in the data
directory. The data directory is ``DENDRITE_HOME`` when set, otherwise the
per-user data directory of the platform (``~/.local/share/dendrite`` on Linux,
``~/Library/Application Support/dendrite`` on macOS, ``%LOCALAPPDATA%\\dendrite``
on Windows).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_HOME = "DENDRITE_HOME"
ENV_DATABASE_URL = "DENDRITE_DATABASE_URL"
MAX_REPORT_DAYS = 3650
"""The longest look-back, in days, that the API and the CLI take for a report (ten years)."""


def data_dir() -> Path:
    """The directory for the default database, journals and rejected records."""
    home = os.environ.get(ENV_HOME)
    path = Path(home).expanduser() if home else Path(platformdirs.user_data_dir("dendrite"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url(url: str | None = None) -> str:
    """The URL the store connects to; see the module docstring for the order."""
    if url:
        return url
    env = os.environ.get(ENV_DATABASE_URL)
    if env:
        return env
    return f"sqlite:///{data_dir() / 'dendrite.db'}"
