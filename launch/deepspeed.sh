#!/usr/bin/env bash
# `fastgan train --strategy deepspeed` under DeepSpeed's launcher.
#
#   launch/deepspeed.sh [launcher options] [--] [fastgan train flags...]
#
# Launcher options (each also from the environment):
#   --hostfile F     HOSTFILE     one line per node, "hostname slots=<GPUs>", e.g.
#                                     node0 slots=8
#                                     node1 slots=8
#                                 (default: this node alone)
#   --master H:P     MASTER_ADDR, MASTER_PORT   the first node (default 127.0.0.1:29500)
#   --node-rank R    NODE_RANK    with --no-ssh: which hostfile line this node is
#   --no-ssh         NO_SSH=1     every node runs this script itself (as with torchrun);
#                                 without it, run it once on the first node and DeepSpeed
#                                 starts the others over ssh (pdsh)
# Two nodes, ssh between them:
#   node0$ launch/deepspeed.sh --hostfile hosts --master node0:29500 -- \
#              --data /shared/shards --out /shared/runs/ffhq --zero 1
# Two nodes, no ssh (each node):
#   nodeR$ launch/deepspeed.sh --hostfile hosts --master node0:29500 --no-ssh --node-rank R \
#              -- --data /shared/shards --out /shared/runs/ffhq --zero 1
set -euo pipefail
hostfile=${HOSTFILE:-} master=${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}
node_rank=${NODE_RANK:-0} no_ssh=${NO_SSH:-0}
while [ $# -gt 0 ]; do
  case $1 in
    --hostfile) hostfile=$2; shift 2 ;;
    --master) master=$2; shift 2 ;;
    --node-rank) node_rank=$2; shift 2 ;;
    --no-ssh) no_ssh=1; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
args=(--master_addr "${master%:*}" --master_port "${master##*:}" --no_local_rank --module)
if [ -n "$hostfile" ]; then args+=(--hostfile "$hostfile"); fi
if [ "$no_ssh" = 1 ]; then args+=(--no_ssh --node_rank "$node_rank"); fi
exec deepspeed "${args[@]}" fastgan train --strategy deepspeed "$@"
