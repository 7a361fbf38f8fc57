"""A non-person object end to end, from the command line, as README's "Your own objects" shows:
COCO file -> train (topology=auto, a few steps) -> export -> predict -> eval.

The data is ``datasets.synthetic``'s random articulated figures drawn for a zebra-like topology
whose file skeleton is in two pieces, so ``topology.connect=auto`` is exercised too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from datasets.topology import Topology

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.usefixtures("one_torch_thread")
def test_train_export_predict_eval_a_zebra(tmp_path):
    data = tmp_path / "zebra"  # README's example data, made by README's command
    subprocess.run(
        [sys.executable, "scripts/make_zebra_set.py", str(data), "--train", "6", "--val", "3",
         "--size", "64"], cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    ann = data / "annotations"
    category = json.loads((ann / "zebra_train.json").read_text())["categories"][0]
    run = tmp_path / "run"
    _cli(
        "train", "data=coco",
        f"data.train_annotations={ann / 'zebra_train.json'}",
        f"data.train_images={data / 'train'}",
        f"data.val_annotations={ann / 'zebra_val.json'}",
        f"data.val_images={data / 'val'}",
        "topology=auto", "topology.connect=auto", "category=all",
        "model=tiny", "data.input_size=[64,64]", "data.batch_size=2", "data.num_workers=0",
        "epochs=1", "steps_per_epoch=2", "val_steps=1", "image_every=0", "threads=1",
        f"out_dir={run}", f"hydra.run.dir={tmp_path / 'hydra'}",
    )  # fmt: skip
    ckpt = torch.load(run / "last.pth", weights_only=True)
    topo = Topology.from_dict(ckpt["config"]["topology"])
    assert topo.name == "zebra" and list(topo.labels) == category["keypoints"]
    assert topo.num_edges == 8  # the file's 7 + one joining the tail
    assert ("forelegL1", "forelegR1") in {
        (topo.labels[a], topo.labels[b]) for a, b in topo.flip_pairs
    }

    _cli("export", f"ckpt={run / 'last.pth'}", "parity.count=1", f"hydra.run.dir={tmp_path / 'h2'}")
    meta = {p.key: p.value for p in onnx.load(str(run / "last.onnx")).metadata_props}
    assert Topology.from_dict(json.loads(meta["topology"])) == topo
    decoder = json.loads((run / "last.decoder.json").read_text())
    assert decoder["labels"] == list(topo.labels) and len(decoder["edges_paf"]) == 8

    pred = tmp_path / "pred"
    _cli(
        "inference.predict", f"input={data / 'val'}", f"model={run / 'last.onnx'}", f"output={pred}"
    )
    preds = json.loads((pred / "predictions.json").read_text())
    assert all(len(p["keypoints"]) == 27 for p in preds)

    ev = tmp_path / "eval"
    _cli(
        "inference.eval", f"model={run / 'last.onnx'}",
        f"annotations={ann / 'zebra_val.json'}", f"images={data / 'val'}",
        f"output={ev}",
    )  # fmt: skip
    vis = tmp_path / "vis"
    val = json.loads((ann / "zebra_val.json").read_text())
    first = next(a["image_id"] for a in val["annotations"] if a["num_keypoints"] > 0)
    image = data / "val" / next(i["file_name"] for i in val["images"] if i["id"] == first)
    _cli(
        "inference.visualize", "oracle=true", f"image={image}", "topology=auto",
        "topology.connect=auto", f"annotations={ann / 'zebra_val.json'}",
        f"images={data / 'val'}", "input_size=[64,64]", f"output={vis}",
    )  # fmt: skip
    assert (vis / "grid.png").is_file()
    stats = json.loads((ev / "stats.json").read_text())
    assert stats["topology"] == "zebra" and list(stats["sigmas"]) == list(topo.labels)
    assert stats["num_images"] == 3 and -1.0 <= stats["stats"]["AP"] <= 1.0
