"""Training loop on tiny in-memory data: loss, checkpoints, resume, targets on device, logging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from datasets.errors import UsageError
from models.build import build_from_checkpoint
from models.checkpoint import load_checkpoint
from tests._train_data import TinyPoseSet
from train.loop import masked_mse, resolve_amp, run

CONF = Path(__file__).resolve().parent.parent / "conf"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(out_dir: Path, **over) -> dict:
    """conf/train.yaml (composed, as plain data) with the tiny model on 64x64 inputs."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", ["model=tiny"]), resolve=True)
    cfg["data"] = {"input_size": [64, 64], "batch_size": 4, "num_workers": 0}
    cfg.update(
        epochs=2, ckpt_every=1, log_every=1, image_every=0, out_dir=str(out_dir), resume="auto"
    )
    cfg["optimizer"]["lr"] = 3e-3
    cfg["threads"] = 1  # tiny tensors: one thread avoids OpenMP oversubscription on a busy machine
    cfg.update(over)
    return cfg


def test_masked_mse_weights_and_shape_errors():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.ones(2, 3, 4, 4)
    mask = torch.ones(2, 4, 4)
    assert masked_mse(pred, target, mask, "heatmap").item() == pytest.approx(1.0)
    mask[:, :2] = 0  # half the map ignored: half the squared error counts
    assert masked_mse(pred, target, mask, "heatmap").item() == pytest.approx(0.5)
    with pytest.raises(
        ValueError, match=r"paf: model output \(2, 3, 4, 4\) and target \(2, 3, 8, 8\)"
    ):
        masked_mse(pred, torch.ones(2, 3, 8, 8), mask, "paf")


def test_masked_mse_foreground_weight():
    """Pixels count 1 + w*|target| times: signed PAF targets weigh by magnitude, masks still apply."""
    pred = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[0.0, 1.0]], [[-0.5, 0.0]]]])  # errors^2: 0, 1, 0.25, 0
    mask = torch.ones(1, 1, 2)
    plain = masked_mse(pred, target, mask, "paf")
    assert plain.item() == pytest.approx((1 + 0.25) / 4)
    weighted = masked_mse(pred, target, mask, "paf", foreground_weight=10.0)
    assert weighted.item() == pytest.approx((11 * 1 + 6 * 0.25) / 4)
    mask[0, 0, 1] = 0  # the ignored column removes the target-1 pixel's term entirely
    assert masked_mse(pred, target, mask, "paf", 10.0).item() == pytest.approx(6 * 0.25 / 4)
    # at the target the weighted loss is zero: the optimum is unchanged
    assert masked_mse(target, target, mask, "paf", 10.0).item() == 0.0


def test_amp_resolution():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(UsageError, match="fp16 needs CUDA"):
        resolve_amp("fp16", cpu)


def test_train_learns_writes_checkpoints_and_logs(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, epochs=3, ckpt_every=2, image_every=2)
    summary = run(cfg, train_set=TinyPoseSet(16), val_set=TinyPoseSet(8, seed=1))
    losses = [e["loss"] for e in summary["epochs"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all("val_loss" in e for e in summary["epochs"])
    # epoch_<N>.pth every ckpt_every epochs and at the end; last.pth always
    assert sorted(p.name for p in out.glob("*.pth")) == ["epoch_1.pth", "epoch_2.pth", "last.pth"]
    assert not list(out.glob(".*tmp")), "temporary checkpoint left behind"
    ck = load_checkpoint(out / "last.pth")
    assert ck["epoch"] == 2 and ck["step"] == summary["step"] == 12
    for key in ("optimizer", "scheduler", "scaler", "meta"):
        assert key in ck
    c = ck["config"]
    assert c["data"]["input_size"] == [64, 64] and c["targets"]["stride"] == 4
    assert c["topology"]["labels"][17] == "neck" and c["model"]["backbone"] == "tiny"
    assert c["model"]["mean"] == [0.485, 0.456, 0.406]
    # the checkpoint rebuilds the trained model
    model, _ = build_from_checkpoint(out / "epoch_2.pth")
    x = TinyPoseSet(1)[0]["image"][None]
    with torch.no_grad():
        heat, paf = model(x)
    assert heat.shape == (1, 18, 16, 16) and paf.shape == (1, 42, 16, 16)
    # TensorBoard: every loss term, lr, throughput, data wait, val loss and a picture
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"images": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("loss", "loss_heatmap", "loss_paf", "lr", "images_per_s", "data_wait"):
        assert f"train/{tag}" in scalars
    assert "val/val_loss" in scalars
    assert "train/prediction" in acc.Tags()["images"]
    wait = [e.value for e in acc.Scalars("train/data_wait")]
    assert all(0 <= w <= 1 for w in wait)


def test_resume_auto_matches_an_uninterrupted_run(tmp_path):
    data = TinyPoseSet(16)
    full = run(tiny_cfg(tmp_path / "full", epochs=3), train_set=data)
    run(tiny_cfg(tmp_path / "split", epochs=2), train_set=data)
    rest = run(tiny_cfg(tmp_path / "split", epochs=3), train_set=data)
    assert [e["epoch"] for e in rest["epochs"]] == [2]  # only the missing epoch ran
    assert rest["step"] == full["step"]
    a = load_checkpoint(tmp_path / "full" / "last.pth")
    b = load_checkpoint(tmp_path / "split" / "last.pth")
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # a finished run resumes to nothing
    again = run(tiny_cfg(tmp_path / "split", epochs=3), train_set=data)
    assert again["epochs"] == [] and again["step"] == full["step"]


def test_fresh_run_refuses_to_overwrite(tmp_path):
    data = TinyPoseSet(8)
    run(tiny_cfg(tmp_path / "r", epochs=1), train_set=data)
    with pytest.raises(FileExistsError, match="resume=auto"):
        run(tiny_cfg(tmp_path / "r", epochs=1, resume=None), train_set=data)


def test_targets_on_device_train_like_worker_targets(tmp_path):
    a = run(tiny_cfg(tmp_path / "a", epochs=1), train_set=TinyPoseSet(8))
    b = run(tiny_cfg(tmp_path / "b", epochs=1), train_set=TinyPoseSet(8, render=False))
    la = [h["loss"] for h in a["history"]]
    lb = [h["loss"] for h in b["history"]]
    assert len(la) == 2
    assert la == pytest.approx(lb, rel=1e-5)


def test_stride_mismatch_is_a_clear_error(tmp_path):
    cfg = tiny_cfg(tmp_path / "x")
    cfg["targets"]["stride"] = 8
    with pytest.raises(ValueError, match="targets.stride=8 but model.stride=4"):
        run(cfg, train_set=TinyPoseSet(4))


def test_sigkill_mid_epoch_then_resume(tmp_path):
    """kill -9 a training process during epoch 1; the rerun resumes from last.pth and finishes,
    and every checkpoint file on disk loads at every point."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests._train_data import compose_train, train_args, write_coco_set

    data = write_coco_set(tmp_path / "coco", n_train=32, n_val=2)
    out = tmp_path / "run"
    args = train_args(
        data, out, "epochs=3", "steps_per_epoch=null", "data.batch_size=2", "data.num_workers=1"
    )
    cmd = [sys.executable, "-m", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    repo = Path(__file__).resolve().parent.parent
    first = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = out / "last.pth"
    deadline = time.monotonic() + 120
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert last.exists(), "no checkpoint after epoch 0"
    os.kill(first.pid, signal.SIGKILL)  # now inside epoch 1 (16 steps to go)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    for p in out.glob("*.pth"):
        load_checkpoint(p)  # never truncated
    assert load_checkpoint(last)["epoch"] == 0, "killed process got past epoch 1"

    # the rerun, in-process: the same overrides through the same Hydra config
    summary = run(compose_train(args))
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]  # resumed after epoch 0
    assert summary["step"] == 3 * 16
    for p in out.glob("*.pth"):
        load_checkpoint(p)
    assert load_checkpoint(last)["epoch"] == 2
    assert not list(out.glob(".*.tmp"))


def test_run_from_data_config_reports_val_ap(tmp_path):
    """The whole path from a Hydra config: COCO-format files -> training -> val loss and AP."""
    from tests._train_data import compose_train, train_args, write_coco_set

    data = write_coco_set(tmp_path / "coco", n_train=8, n_val=4)
    args = train_args(data, tmp_path / "run", "epochs=1", "val_every=1", "image_every=1")
    cfg = compose_train(args)
    summary = run(cfg)
    ep = summary["epochs"][-1]
    assert 0.0 <= ep["val_ap"] <= 1.0 and "val_loss" in ep


def test_val_ap_of_perfect_maps_is_one(tmp_path):
    """evaluate() maps decoded input-pixel skeletons back through each sample's fit: ground-truth
    maps of non-square images squashed to 64x64 must score AP ~1 against the original file."""
    from datasets.coco import build_dataset, collate
    from inference.decoder import OpenPoseDecoder
    from tests._train_data import write_coco_set
    from train import distributed as du
    from train.loop import Context, _val_category, evaluate, make_loader

    root = write_coco_set(tmp_path / "coco", n_train=1, n_val=6, hw=(96, 160))
    cfg = tiny_cfg(tmp_path / "r")
    cfg["data"].update(
        val_annotations=str(root / "annotations" / "person_keypoints_val2017_modified.json"),
        val_images=str(root / "val2017"),
        batch_size=2,
    )
    topo = TinyPoseSet(1).topology
    val = build_dataset(cfg, "val", topo)
    samples = [val[i] for i in range(len(val))]

    class Oracle(torch.nn.Module):
        stride = 4

        def forward(self, x):  # the targets of whichever sample this image is
            idx = [
                next(i for i, s in enumerate(samples) if torch.equal(s["image"], im)) for im in x
            ]
            return (
                torch.stack([samples[i]["heatmap"] for i in idx]),
                torch.stack([samples[i]["paf"] for i in idx]),
            )

    dist = du.DistInfo()
    ctx = Context(cfg, dist, topo, val.targets, None, False, decoder=OpenPoseDecoder(topo))
    ctx.val_category = _val_category(cfg, topo)
    out = evaluate(Oracle(), make_loader(val, cfg, dist, False, collate), ctx)
    assert out["val_loss"] == pytest.approx(0.0, abs=1e-12)
    assert out["val_ap"] > 0.95, out


@pytest.mark.gpu
def test_cuda_amp_channels_last_training(tmp_path):
    """On CUDA: autocast (bf16 where supported, else fp16 with a GradScaler), channels_last,
    targets rendered on the device; the checkpoint holds the scaler state."""
    cfg = tiny_cfg(tmp_path / "gpu", epochs=1, device="cuda", amp="auto", channels_last="auto")
    cfg["data"]["targets_on_device"] = True
    summary = run(cfg, train_set=TinyPoseSet(8, render=False))
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    ck = load_checkpoint(tmp_path / "gpu" / "last.pth")
    assert "scaler" in ck
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_amp("auto", torch.device("cuda")) is expected


def test_empty_images_are_skipped_and_counted_in_the_summary(tmp_path):
    """A 0-byte image in the training and the validation set (read in a loader worker) is
    replaced, and the counts reach summary.json; training goes on."""
    from tests._train_data import compose_train, train_args, write_coco_set

    data = write_coco_set(tmp_path / "coco", n_train=4, n_val=2)
    (data / "train2017" / "000000000001.jpg").write_bytes(b"")
    (data / "val2017" / "000000000005.jpg").write_bytes(b"")
    args = train_args(
        data, tmp_path / "run", "epochs=1", "steps_per_epoch=4", "val_every=1",
        "data.num_workers=1",
    )  # fmt: skip
    summary = run(compose_train(args))  # (the warnings are the worker's, on its stderr)
    assert summary["skipped_images"] == {"train": 1, "val": 1}
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["skipped_images"] == {"train": 1, "val": 1}
    assert saved["epochs"][0]["skipped_images"] == 1
