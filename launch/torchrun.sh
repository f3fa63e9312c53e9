#!/usr/bin/env bash
# `fastgan train` under torchrun, on one node or many (c10d rendezvous).
#
#   launch/torchrun.sh [launcher options] [--] [fastgan train flags...]
#
# Launcher options (each also from the environment; the flag wins):
#   --nnodes N          NNODES          nodes (default 1)
#   --node-rank R       NODE_RANK       this node's rank, for the logs (c10d assigns ranks)
#   --nproc N           NPROC_PER_NODE  processes per node (default: the GPUs, or 1 on CPU)
#   --endpoint H:P      RDZV_ENDPOINT   rendezvous host:port, the same on every node
#                                       (default MASTER_ADDR:MASTER_PORT, 127.0.0.1:29500)
#   --rdzv-id ID        RDZV_ID         job id, the same on every node (default fastgan)
#   --max-restarts N    MAX_RESTARTS    restarts after a failed worker (default 3): the job
#                                       restarts and resumes its newest complete checkpoint
#   --rdzv-conf K=V,..  RDZV_CONF       torchrun's rendezvous options; is_host=1 on the node
#                                       that serves the rendezvous, when torchrun cannot tell
#                                       from the endpoint's name (an address its hostname
#                                       does not resolve to)
#   --local-addr A      LOCAL_ADDR      the address this node is reached at, when its
#                                       hostname resolves to another (several networks)
#
# Every node runs the same command. Two nodes:
#   node0$ launch/torchrun.sh --nnodes 2 --node-rank 0 --endpoint node0:29500 -- \
#              --data /shared/shards --out /shared/runs/ffhq --batch 256
#   node1$ launch/torchrun.sh --nnodes 2 --node-rank 1 --endpoint node0:29500 -- \
#              --data /shared/shards --out /shared/runs/ffhq --batch 256
# Checkpoints must live on a filesystem every node sees (--out).
# torchrun runs as `python3 -m fastgan.torchrun`: SIGTERM, SIGUSR1 or Ctrl-C (once) let
# every rank checkpoint and the job exit 0 (fastgan/train/preemption.py).
set -euo pipefail
nnodes=${NNODES:-1} node_rank=${NODE_RANK:-0} nproc=${NPROC_PER_NODE:-}
endpoint=${RDZV_ENDPOINT:-${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}}
rdzv_id=${RDZV_ID:-fastgan} max_restarts=${MAX_RESTARTS:-3} rdzv_conf=${RDZV_CONF:-}
local_addr=${LOCAL_ADDR:-}
while [ $# -gt 0 ]; do
  case $1 in
    --nnodes) nnodes=$2; shift 2 ;;
    --node-rank) node_rank=$2; shift 2 ;;
    --nproc) nproc=$2; shift 2 ;;
    --endpoint) endpoint=$2; shift 2 ;;
    --rdzv-id) rdzv_id=$2; shift 2 ;;
    --max-restarts) max_restarts=$2; shift 2 ;;
    --rdzv-conf) rdzv_conf=$2; shift 2 ;;
    --local-addr) local_addr=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [ -z "$nproc" ]; then
  nproc=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')
fi
exec python3 -m fastgan.torchrun \
  --nnodes "$nnodes" --node-rank "$node_rank" --nproc-per-node "$nproc" \
  --rdzv-backend c10d --rdzv-endpoint "$endpoint" --rdzv-id "$rdzv_id" \
  --max-restarts "$max_restarts" ${rdzv_conf:+--rdzv-conf "$rdzv_conf"} \
  ${local_addr:+--local-addr "$local_addr"} \
  -m fastgan train "$@"
