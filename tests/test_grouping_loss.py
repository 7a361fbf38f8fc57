"""scripts/grouping_loss.py: perfect grouping is an upper bound of the decoder's oracle AP."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_perfect_grouping_bounds_the_decoder(coco_mini):
    ann = coco_mini / "annotations" / "person_keypoints_val2017.json"
    proc = subprocess.run(
        [sys.executable, "scripts/grouping_loss.py", "--annotations", str(ann), "--worst", "2"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = re.findall(r"\| (\S+) \| (\d+x\d+) \| ([\d.]+) \| ([\d.]+) \| (-?[\d.]+) \| (\d+) \|",
                      proc.stdout)  # fmt: skip
    assert [r[1] for r in rows] == ["56x56", "120x160"], proc.stdout
    for _, _, dec, perfect, lost, objects in rows:
        assert float(perfect) >= float(dec) > 0.5, proc.stdout
        assert abs(float(perfect) - float(dec) - float(lost)) < 0.0015
        assert int(objects) > 0
    assert "largest per-image AP losses" in proc.stdout
