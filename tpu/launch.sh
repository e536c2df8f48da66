#!/usr/bin/env bash
# Starts `python main.py` on every worker of a TPU VM at once, in the background, each
# worker logging to its own file; then follows worker 0's log.
#
# Usage:
#   ZONE=us-central2-b [PROJECT=...] tpu/launch.sh NAME CONFIG WORKDIR [main.py flags...]
#
# Example:
#   ZONE=us-central2-b tpu/launch.sh clip-b16 configs/clip_b16.py /mnt/shared/clip_b16 \
#     --config.data.train=jsonl:/mnt/shared/pairs:train
#
# Every host runs the same command. main.py calls jax.distributed.initialize(), which finds
# the pod's workers itself; each host reads its own shard of the training data (records
# host::num_hosts), so the data must be at the same path on every worker. WORKDIR must be
# one location that every worker sees (checkpoints are written jointly by all hosts): a
# gs:// bucket or a shared filesystem such as Filestore NFS mounted at the same path.
#
# Preemption and restarts: SIGTERM (a Spot/preemptible notice, or tpu/stop.sh) makes the
# run save a checkpoint and exit; rerunning the same command resumes from the latest
# checkpoint in WORKDIR, at the same input position.
#
# Logs: ~/$REMOTE_DIR/logs/RUN.worker<N>.log on worker N (RUN defaults to a timestamp);
# the process id goes to ~/$REMOTE_DIR/logs/main.pid. Ctrl-C stops only the following of
# the log (FOLLOW=0 skips it), never the run.
#
# Settings (environment variables): ZONE (required), PROJECT, REMOTE_DIR (see
# common.sh), RUN (log name), FOLLOW (1).
set -euo pipefail

if [[ $# -lt 3 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
NAME="$1"
CONFIG="$2"
WORKDIR="$3"
shift 3
source "$(dirname "$0")/common.sh"
RUN="${RUN:-$(date +%Y%m%d-%H%M%S)}"

WORKERS="$(tpu_worker_ips "${NAME}")"
if [[ -z "${WORKERS}" ]]; then
  echo "error: could not list the workers of TPU VM ${NAME}" >&2
  exit 1
fi
echo "launching on $(tr ',' '\n' <<<"${WORKERS}" | wc -l) worker(s) of ${NAME}: run ${RUN}" >&2

ARGS="--config=$(printf '%q' "${CONFIG}") --workdir=$(printf '%q' "${WORKDIR}")"
for arg in "$@"; do
  ARGS+=" $(printf '%q' "${arg}")"
done

# The worker index, from the VM's metadata (the same number gcloud's --worker takes).
WORKER_ID='$(curl -sf -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'

tpu_ssh "${NAME}" all "
  cd ~/${REMOTE_DIR}
  mkdir -p logs
  if [[ -f logs/main.pid ]] && kill -0 \$(cat logs/main.pid) 2>/dev/null; then
    echo \"error: \$(hostname): main.py is already running (pid \$(cat logs/main.pid))\" >&2
    exit 1
  fi
  log=logs/${RUN}.worker${WORKER_ID}.log
  nohup setsid .venv/bin/python main.py ${ARGS} \
    > \"\${log}\" 2>&1 < /dev/null &
  echo \$! > logs/main.pid
  echo \"\$(hostname): pid \$! logging to ~/${REMOTE_DIR}/\${log}\""

if [[ "${FOLLOW:-1}" == 1 ]]; then
  echo "following worker 0's log (Ctrl-C stops following, not the run)" >&2
  tpu_ssh "${NAME}" 0 "tail -n +1 -F ~/${REMOTE_DIR}/logs/${RUN}.worker*.log"
fi
