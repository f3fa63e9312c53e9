#!/usr/bin/env bash
# Launch `fastgan train` with torchrun on one node or many.
#
#   launch/torchrun.sh [fastgan train flags...]
#
# Environment (defaults for a single node):
#   NNODES=1  NODE_RANK=0  NPROC_PER_NODE=<GPUs, or 1 on CPU>
#   MASTER_ADDR=127.0.0.1  MASTER_PORT=29500
# Example, two nodes (run on each, NODE_RANK 0 and 1):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun.sh --data /data/shards --batch 256
set -euo pipefail
nproc=${NPROC_PER_NODE:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}
exec torchrun \
  --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$nproc" \
  --rdzv-backend c10d --rdzv-endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
  --rdzv-id "${RDZV_ID:-fastgan}" \
  -m fastgan train "$@"
