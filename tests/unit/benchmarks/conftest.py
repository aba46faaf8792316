"""The benchmark scripts are a folder, not a package: ``python benchmarks/<name>.py`` puts
``benchmarks/`` first on the path, where they find their shared ``_bench`` module. The tests
import them the same way."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
