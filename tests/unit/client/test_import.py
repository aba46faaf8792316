"""``genmedia.client`` stands alone: importing it loads no Ray, torch, diffusers, numpy, and
nothing else of genmedia."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("ray", "torch", "diffusers", "numpy", "transformers", "PIL", "fastapi")


def test_import_pulls_in_no_server_side_module():
    code = (
        "import json, sys; import genmedia.client, genmedia.client.cli; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    ours = [m for m in loaded if m.startswith("genmedia.") and not m.startswith("genmedia.client")]
    assert heavy == [] and ours == []
