#!/usr/bin/env bash
# Train on every GPU of a DGX node (or several nodes) with torchrun; arguments are Hydra overrides.
#
#   scripts/train_dgx.sh experiment=resnet18_224
#   NPROC=4 scripts/train_dgx.sh experiment=resnet18_224 data.batch_size=16
#
# Multi-node (run the same line on every node; RDZV_ENDPOINT is one node's host:port):
#   NNODES=2 RDZV_ENDPOINT=dgx01:29400 RUN_ID=r18-a scripts/train_dgx.sh experiment=resnet18_224
#
# data.batch_size is per GPU: the global batch is batch_size x GPUs. trt_pose's recipe is one
# GPU at batch 64; keep its global batch on 8 GPUs with data.batch_size=8.
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ "$NPROC" -gt 0 ]] || NPROC=8
fi
NNODES=${NNODES:-1}
PYTHON=${PYTHON:-python}
# One id for the whole run: every rank (and node) gets the same Hydra log dir, where otherwise
# each process would resolve ${now:} itself.
RUN_ID=${RUN_ID:-$(date +%Y-%m-%d_%H-%M-%S)}
# CPU threads per rank for data-side torch ops; loader workers do the heavy lifting
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

if [[ "$NNODES" -eq 1 ]]; then
  launch=(--standalone --nnodes=1)
else
  : "${RDZV_ENDPOINT:?multi-node runs need RDZV_ENDPOINT=host:port of one node}"
  launch=(--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="$RUN_ID")
fi

cmd=("$PYTHON" -m torch.distributed.run "${launch[@]}" --nproc_per_node="$NPROC"
     -m train "hydra.run.dir=outputs/train/$RUN_ID" "$@")
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
