"""The frame loop: sources, read-ahead, tracking through the decoder, sinks, bad input."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from datasets.errors import UsageError, UserError
from datasets.geometry import apply, fit_matrix
from datasets.images import MAX_PIXELS
from datasets.synthetic_video import render_video, simulate_walks
from datasets.targets import TargetConfig, render_targets
from datasets.topology import Topology
from inference import stream
from inference.decoder.base import DecoderBase
from inference.draw import maps_overlay
from inference.predict import run
from inference.runtime import Runtime, maxpool_nchw
from inference.stream import (
    Frame,
    JsonSink,
    Pipeline,
    ReadAhead,
    Source,
    Timer,
    make_tracker,
    open_source,
    run_stream,
    source_limits,
)
from inference.track import Tracker
from models.contract import ModelInfo
from tests.deploy_fixtures import random_image

COCO18 = Topology.named("coco18")


class WalksRuntime(Runtime):
    """A 'network' whose maps are the training targets of frame n of synthetic walks (frames
    come one by one, in order): the decoder and tracker then see real skeletons."""

    backend = "ground-truth"

    def __init__(self, info: ModelInfo, keypoints: np.ndarray) -> None:
        self.info, self.keypoints, self.n = info, keypoints, 0

    def preprocess(self, image):
        x, m = super().preprocess(image)
        self._matrix = m
        return x, m

    def _run(self, batch):
        kp = self.keypoints[self.n].copy()  # (N, K, 2) original pixels
        self.n += 1
        kp = np.concatenate([apply(self._matrix, kp), np.full((*kp.shape[:2], 1), 2.0)], -1)
        heat, paf = render_targets(kp, self.info.topology, self.info.map_size, TargetConfig())
        return {
            "heatmap": heat[None],
            "part_affinity_fields": paf[None],
            "maxpool_heatmap": maxpool_nchw(heat[None], 3),
        }


def _frames_source(n: int, hw=(180, 320), kind="video") -> Source:
    def frames():
        for i in range(n):
            yield Frame(np.zeros((*hw, 3), np.uint8), i, i, f"frame_{i:06d}")

    return Source(kind, "walks", frames, fps=15.0, count=n)


def test_decoder_and_tracker_keep_ids_on_walking_figures(tmp_path):
    """Two figures walk past each other (never hidden here); through the real decoder every
    skeleton gets a track id, and each figure keeps one id over the whole clip."""
    walks = simulate_walks(2, 40, size=(180, 320), seed=4)
    walks.depth[:] = 0  # nobody hides anybody: the maps show both figures in every frame
    info = ModelInfo(COCO18, input_size=(96, 160), decoder={"threshold_heatmap": 0.1})
    source = _frames_source(40)
    pipeline = Pipeline(
        WalksRuntime(info, walks.keypoints), tracker=make_tracker({}, source, COCO18)
    )
    sink = JsonSink(tmp_path, COCO18)
    stats = run_stream(source, pipeline, [sink])
    assert stats["frames"] == 40 and stats["ms_per_frame"]["track"] > 0
    preds = json.loads((tmp_path / "predictions.json").read_text())
    images = json.loads((tmp_path / "images.json").read_text())
    assert [im["frame"] for im in images] == list(range(40))
    ids_of = {0: set(), 1: set()}
    view = walks.in_view()
    for p in preds:
        kp = np.array(p["keypoints"]).reshape(17, 3)
        t = p["image_id"]
        # which figure is it: the nearest ground truth (COCO's 17 = coco18's first 17)
        d = [np.nanmean(np.abs(kp[:, :2] - walks.keypoints[t, g, :17])) for g in (0, 1)]
        g = int(np.argmin(d))
        if view[t, g] and min(d) < 5:
            ids_of[g].add(p["track_id"])
    assert len(ids_of[0]) == 1 and len(ids_of[1]) == 1 and ids_of[0] != ids_of[1]


def test_pipeline_warms_the_decoder_and_tracker_up(monkeypatch):
    """Both compiled stages load before the first frame (a fresh checkout compiles the tracker
    for ~14 s: that stalled a live stream's first frame and filled predict's track time)."""
    calls = []
    monkeypatch.setattr(DecoderBase, "warm_up", lambda self: calls.append("decoder"))
    monkeypatch.setattr(Tracker, "warm_up", lambda self: calls.append("tracker"))
    walks = simulate_walks(1, 2, size=(180, 320), seed=4)
    runtime = WalksRuntime(ModelInfo(COCO18, input_size=(96, 160)), walks.keypoints)
    Pipeline(runtime, tracker=make_tracker({}, _frames_source(1), COCO18))
    Pipeline(runtime)
    assert calls == ["decoder", "tracker", "decoder"]


def test_tracking_defaults_follow_the_source():
    assert make_tracker({}, _frames_source(1), COCO18) is not None
    assert make_tracker({}, _frames_source(1, kind="images"), COCO18) is None
    assert make_tracker({"track": True}, _frames_source(1, kind="images"), COCO18) is not None
    tracker = make_tracker({"smooth": True, "tracker": {"max_age": 7}}, _frames_source(1), COCO18)
    assert tracker.smooth and tracker.max_age == 7 and tracker.fps == 15.0
    with pytest.raises(UsageError, match=r"track='maybe': give true, false or null"):
        make_tracker({"track": "maybe"}, _frames_source(1), COCO18)


def test_source_limits_refuse_counts_that_would_read_nothing():
    assert source_limits({}) == {"max_frames": None, "max_pixels": MAX_PIXELS}
    assert source_limits({"max_frames": 5, "max_pixels": None}) == {
        "max_frames": 5,
        "max_pixels": None,  # null: no cap
    }
    for bad in ({"max_frames": -1}, {"max_frames": 0}, {"max_pixels": -5}, {"max_frames": "x"}):
        with pytest.raises(UsageError, match=f"{next(iter(bad))} must be a whole number >= 1"):
            source_limits(bad)


def test_video_loop_and_max_frames(tmp_path):
    video = render_video(tmp_path / "walk.mp4", simulate_walks(2, 5, size=(64, 96)), fps=10)
    source = open_source(str(video), loop=True, max_frames=12)
    assert source.kind == "video" and source.fps == pytest.approx(10.0)
    frames = list(source.frames())
    assert [f.index for f in frames] == list(range(12))  # looped twice and a bit, indices go on
    assert frames[0].image.shape == (64, 96, 3)
    assert np.array_equal(frames[0].image, frames[5].image)


def test_read_ahead_drops_old_frames_of_a_live_source():
    source = _frames_source(60, kind="camera")
    reader = ReadAhead(source, Timer(), depth=2, drop=True)
    got = []
    for frame in reader:
        got.append(frame.index)
        time.sleep(0.01)  # a consumer slower than the reader
    reader.close()
    assert source.dropped > 0 and got[-1] == 59  # the newest frame always arrives
    assert len(got) + source.dropped == 60
    assert got == sorted(got)


def test_read_ahead_close_stops_a_blocked_reader():
    reader = ReadAhead(_frames_source(1000), Timer(), depth=2)
    next(iter(reader))
    reader.close()
    assert not reader.thread.is_alive()


class _FakeCamera:
    """cv2.VideoCapture stand-in: a camera that gives 3 frames and then disappears."""

    def __init__(self, target):
        self.left = 3

    def isOpened(self):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: 96.0}.get(prop, 0.0)

    def read(self):
        self.left -= 1
        return (self.left >= 0), random_image(64, 96)

    def release(self):
        pass


def test_camera_lost_mid_run_keeps_json(onnx_model, tmp_path, monkeypatch):
    monkeypatch.setattr(stream.cv2, "VideoCapture", _FakeCamera)
    out = tmp_path / "o"
    with pytest.raises(UserError, match="camera 0 stopped sending frames after 3 frames"):
        run({"input": "0", "model": str(onnx_model), "output": str(out)})
    images = json.loads((out / "images.json").read_text())
    assert [im["frame"] for im in images] == [0, 1, 2]
    json.loads((out / "predictions.json").read_text())  # complete JSON
    assert (out / "camera_0_pose.mp4").is_file()


def test_unreadable_inputs(onnx_model, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(UserError, match="cannot read video .*junk.mp4"):
        open_source(str(junk)).frames().__next__()
    with pytest.raises(UserError, match="could not open stream http://127.0.0.1:9/"):
        open_source("http://127.0.0.1:9/nothing.mjpg")
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), random_image(64, 96))
    (folder / "b.jpg").write_bytes(b"\xff\xd8 broken")
    r = run({"input": str(folder), "model": str(onnx_model), "output": str(tmp_path / "f")})
    assert r["stats"]["frames"] == 1 and r["stats"]["skipped_images"] == [str(folder / "b.jpg")]


def test_maps_overlay_lands_on_the_original_pixels():
    """A heatmap peak at a known input position shows at the matching original position."""
    info = ModelInfo(COCO18, input_size=(96, 160), aspect="letterbox")
    image = np.zeros((300, 300, 3), np.uint8)
    m = fit_matrix((300, 300), info.input_size, "letterbox")
    want = np.array([210.0, 90.0])  # original pixels
    u, v = apply(m, want[None])[0] / info.stride  # map coordinates
    heat = np.zeros((COCO18.num_parts, *info.map_size), np.float32)
    heat[0, int(v), int(u)] = 1.0
    out = maps_overlay(image, m, info.input_size, COCO18, heatmap=heat)
    ys, xs = np.nonzero(out.max(2) > 40)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    cell = info.stride / m[0, 0]  # one map pixel in original pixels
    assert np.abs(centre - want).max() < cell


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from export.__main__ import run as export
    from tests.deploy_fixtures import export_cfg, make_checkpoint

    d = tmp_path_factory.mktemp("stream")
    ckpt = make_checkpoint(d / "tiny.pth")
    return export(export_cfg(ckpt, output=str(d / "tiny.onnx")))["onnx"]


def test_stop_event_ends_the_loop(tmp_path):
    info = ModelInfo(COCO18, input_size=(96, 160))
    walks = simulate_walks(1, 500, size=(180, 320))
    stop = threading.Event()

    class StopAfter:
        def write(self, r):
            if r.frame.index == 4:
                stop.set()

        def close(self):
            self.closed = True

    sink = StopAfter()
    pipeline = Pipeline(WalksRuntime(info, walks.keypoints))
    stats = run_stream(_frames_source(500), pipeline, [sink], stop=stop)
    assert stats["frames"] == 5 and sink.closed


def test_folder_image_ids_never_collide_and_sub_folders_are_named(tmp_path, caplog):
    """COCO-style numeric names keep their number; other names take their position or the next
    free id (before, d.jpg took id 5 beside 5.jpg: two images of one id in predictions.json).
    Images in sub-folders are not read, and the warning (or error) says where they are."""
    for name in ("5.jpg", "005.png", "a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "x.jpg"), np.zeros((8, 8, 3), np.uint8))
    frames = list(open_source(str(tmp_path)).frames())
    ids = {f.name: f.image_id for f in frames}
    assert ids == {"005": 5, "5": 2, "a": 3, "b": 4, "c": 6, "d": 7, "e": 8}
    assert "not reading sub-folders; 1 sub-folders hold images (sub): give input=" in caplog.text
    only_sub = tmp_path / "only"
    (only_sub / "inner").mkdir(parents=True)
    cv2.imwrite(str(only_sub / "inner" / "y.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserError, match=r"no images .* in folder .*only; 1 sub-folders hold images "
                       r"\(inner\): give input=.*inner for those"):  # fmt: skip
        open_source(str(only_sub))
