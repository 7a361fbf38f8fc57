"""The neck keypoint that turns COCO's 17 person keypoints into trt_pose's 18 (coco18 topology).

One rule, shared by preprocessing (``datasets.preprocess``) and the oracle evaluation
(``inference.eval oracle=true``): the neck is the midpoint of the two shoulders (COCO indices 5 and
6); it is labelled only when both shoulders are labelled (v > 0), and visible (v = 2) only when both
are visible; otherwise it is unlabelled, with (x, y, v) = (0, 0, 0) as COCO writes unlabelled
keypoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LEFT_SHOULDER, RIGHT_SHOULDER = 5, 6
# COCO's person keypoints in COCO's order
COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip


def adds_neck(keypoints: Sequence[str], topology: Any) -> bool:
    """Is this COCO's 17 + neck? True when a file's keypoints are COCO's 17 person keypoints and
    the topology (or its list of labels) wants them plus ``neck``: the neck is then derived with
    ``add_neck``. The one place this question is decided."""
    labels = list(getattr(topology, "labels", topology))
    return tuple(keypoints) == COCO_PERSON_KEYPOINTS and labels == [*COCO_PERSON_KEYPOINTS, "neck"]


def add_neck(keypoints_17: Any) -> np.ndarray:
    """Append the neck to COCO keypoints: (..., 17, 3) -> (..., 18, 3), float64.

    Also accepts COCO's flat list of 51 numbers (one annotation's ``keypoints``), giving (18, 3).
    """
    kp = np.asarray(keypoints_17, dtype=np.float64)
    if kp.ndim == 1 and kp.size == 51:
        kp = kp.reshape(17, 3)
    if kp.ndim < 2 or kp.shape[-2:] != (17, 3):
        raise ValueError(
            f"add_neck expects (..., 17, 3) COCO keypoints (or 51 numbers); got {kp.shape}"
        )
    ls, rs = kp[..., LEFT_SHOULDER, :], kp[..., RIGHT_SHOULDER, :]
    labelled = (ls[..., 2] > 0) & (rs[..., 2] > 0)
    visible = (ls[..., 2] == 2) & (rs[..., 2] == 2)
    neck = np.zeros(kp.shape[:-2] + (1, 3))
    neck[..., 0, :2] = np.where(labelled[..., None], (ls[..., :2] + rs[..., :2]) / 2, 0.0)
    neck[..., 0, 2] = np.where(visible, 2.0, np.where(labelled, 1.0, 0.0))
    return np.concatenate([kp, neck], axis=-2)
