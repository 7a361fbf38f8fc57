"""What the decoder scripts share: where coco-mini lies (next to the repository, in
../shared/data, used in place) and the two map sizes the decoder's goals are set at."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ANN_DIR = REPO.parent / "shared" / "data" / "coco-mini" / "annotations"
DEFAULT_ANN = [ANN_DIR / f"person_keypoints_{s}2017.json" for s in ("train", "val")]
SIZES = {"56x56": (224, 224), "120x160": (480, 640)}  # input sizes of 56x56 and 120x160 maps
