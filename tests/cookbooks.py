"""`cookbook/regenerate.py`, importable by the tests (the cookbook folder is no package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "cookbook" / "regenerate.py"
_spec = importlib.util.spec_from_file_location("cookbook_regenerate", _PATH)
assert _spec is not None and _spec.loader is not None
regenerate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regenerate)
