"""Makes the shared fabrication helpers (`nnunet_fixtures`) importable for these tests and tests/scripts."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
