"""Image <-> input geometry: fit policies, inverses, and OpenCV's pixel-centre convention."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from datasets.geometry import apply, compose, cv2_matrix, fit_matrix, invert


def test_squash_maps_corners_to_corners():
    m = fit_matrix((480, 640), (224, 224), "squash")
    assert np.allclose(apply(m, [[0, 0], [640, 480], [320, 240]]), [[0, 0], [224, 224], [112, 112]])


def test_letterbox_keeps_aspect_and_centres():
    m = fit_matrix((480, 640), (224, 224), "letterbox")
    corners = apply(m, [[0, 0], [640, 480]])
    assert np.allclose(corners, [[0, 28], [224, 196]])  # 640x480 -> 224x168, centred vertically


def test_invert_and_compose():
    m = fit_matrix((300, 500), (256, 192), "letterbox")
    pts = np.array([[10.5, 20.25], [499.0, 1.0]])
    assert np.allclose(apply(invert(m), apply(m, pts)), pts)
    assert np.allclose(compose(invert(m), m), [[1, 0, 0], [0, 1, 0]])


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="crop"):
        fit_matrix((10, 10), (5, 5), "crop")


@pytest.mark.parametrize("policy", ["squash", "letterbox"])
def test_cv2_matrix_puts_a_pixel_where_the_affine_says(policy):
    # a bright 8x8 block in a 400x320 (h, w) image; its centre in continuous coordinates is
    # (104 + 4, 200 + 4); after warping, the intensity centroid must land at apply(m, centre)
    img = np.zeros((400, 320), np.float32)
    img[200:208, 104:112] = 1.0
    m = fit_matrix((400, 320), (100, 100), policy)
    out = cv2.warpAffine(img, cv2_matrix(m), (100, 100), flags=cv2.INTER_LINEAR)
    ys, xs = np.mgrid[0:100, 0:100]
    centroid = np.array([(out * (xs + 0.5)).sum(), (out * (ys + 0.5)).sum()]) / out.sum()
    assert np.allclose(centroid, apply(m, [108.0, 204.0]), atol=0.05)
