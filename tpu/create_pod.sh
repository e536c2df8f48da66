#!/usr/bin/env bash
# Creates a Cloud TPU VM (a single host or a pod slice) for vlp_jax.
#
# Usage:
#   ZONE=us-central2-b [PROJECT=my-project] [ACCELERATOR_TYPE=v4-256] [SPOT=1] \
#     tpu/create_pod.sh NAME [extra `gcloud compute tpus tpu-vm create` flags...]
#
# Settings (environment variables):
#   ZONE              zone with capacity for the accelerator type (required)
#   PROJECT           GCP project (default: gcloud's configured project)
#   ACCELERATOR_TYPE  v4-256 (default), v4-8, v5litepod-256, v5p-128, v6e-256, ...
#   RUNTIME_VERSION   TPU VM image; default: the recommended base image for the
#                     accelerator generation (tpu-ubuntu2204-base for v2-v4,
#                     v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p,
#                     v2-alpha-tpuv6e for v6e). List them with
#                     `gcloud compute tpus tpu-vm versions list --zone=$ZONE`.
#   SPOT=1            create a Spot VM (cheaper; can be preempted at any time; vlp_jax
#                     saves a checkpoint on SIGTERM and resumes when relaunched)
#   PREEMPTIBLE=1     create a legacy preemptible VM instead
#
# Example:
#   ZONE=us-central2-b ACCELERATOR_TYPE=v4-256 SPOT=1 tpu/create_pod.sh clip-b16
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
NAME="$1"
shift
source "$(dirname "$0")/common.sh"

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-256}"
if [[ -z "${RUNTIME_VERSION:-}" ]]; then
  case "${ACCELERATOR_TYPE}" in
    v2-*|v3-*|v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *)
      echo "error: no default RUNTIME_VERSION for ACCELERATOR_TYPE=${ACCELERATOR_TYPE};" \
           "set RUNTIME_VERSION" >&2
      exit 2
      ;;
  esac
fi

FLAGS=(--accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}")
if [[ "${SPOT:-0}" == 1 ]]; then
  FLAGS+=(--spot)
elif [[ "${PREEMPTIBLE:-0}" == 1 ]]; then
  FLAGS+=(--preemptible)
fi

echo "creating TPU VM ${NAME}: ${ACCELERATOR_TYPE}, runtime ${RUNTIME_VERSION}, zone ${ZONE}" >&2
gcloud compute tpus tpu-vm create "${NAME}" "${GCLOUD_FLAGS[@]}" "${FLAGS[@]}" "$@"
echo "workers: $(tpu_worker_ips "${NAME}")" >&2
echo "next: ZONE=${ZONE} tpu/install.sh ${NAME}" >&2
