# Shared settings and helpers of the tpu/ scripts; sourced by them, not run on its own.
#
# Settings (environment variables):
#   ZONE        zone of the TPU VM, e.g. us-central2-b                (required)
#   PROJECT     GCP project; empty: gcloud's configured project
#   REMOTE_DIR  directory of the code on every worker, relative to the remote home
#               directory (default: vlp_jax)

: "${ZONE:?set ZONE, e.g. ZONE=us-central2-b}"
REMOTE_DIR="${REMOTE_DIR:-vlp_jax}"
GCLOUD_FLAGS=(--zone="${ZONE}")
if [[ -n "${PROJECT:-}" ]]; then
  GCLOUD_FLAGS+=(--project="${PROJECT}")
fi

if ! command -v gcloud >/dev/null; then
  echo "error: gcloud is not installed; see https://cloud.google.com/sdk/docs/install" >&2
  exit 1
fi

# tpu_ssh NAME WORKER COMMAND: runs the bash COMMAND (one string) on WORKER ("all" or an
# index) of the TPU VM NAME. With "all", every worker runs it at the same time.
tpu_ssh() {
  local name="$1" worker="$2" command="$3"
  gcloud compute tpus tpu-vm ssh "${name}" "${GCLOUD_FLAGS[@]}" --worker="${worker}" \
    --command="bash -c $(printf '%q' "set -euo pipefail; ${command}")"
}

# tpu_worker_ips NAME: the internal IP address of every worker of NAME, comma-separated,
# in worker order.
tpu_worker_ips() {
  gcloud compute tpus tpu-vm describe "$1" "${GCLOUD_FLAGS[@]}" \
    --flatten='networkEndpoints[]' --format='value(networkEndpoints.ipAddress)' | paste -sd, -
}
