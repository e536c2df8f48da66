#!/usr/bin/env bash
# Installs vlp_jax on every worker of a TPU VM: code, a Python >= 3.11 virtualenv and
# `pip install -e '.[tpu]'`, then checks that jax sees the TPU on every worker.
#
# Usage:
#   ZONE=us-central2-b [PROJECT=...] tpu/install.sh NAME              # copy this checkout
#   ZONE=us-central2-b [PROJECT=...] tpu/install.sh NAME GIT_URL [BRANCH]  # clone on workers
#
# Without GIT_URL, the files of this checkout (tracked and untracked, minus what .gitignore
# excludes, so uncommitted edits go too) are packed and copied to every worker. With
# GIT_URL, every worker clones it (or fetches and resets an existing clone) at BRANCH
# (default: main). Either way the code ends up in ~/$REMOTE_DIR (default ~/vlp_jax) and
# the virtualenv in ~/$REMOTE_DIR/.venv. Rerun after changing the code; it is idempotent.
#
# jax 0.10 needs Python >= 3.11 and the TPU VM images ship 3.10, so the virtualenv is
# made with uv (installed with pip on first use), which fetches a standalone Python.
#
# Settings (environment variables): ZONE (required), PROJECT, REMOTE_DIR (see above),
# PYTHON_VERSION (default 3.11), CHECK=0 to skip the jax device check.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
NAME="$1"
GIT_URL="${2:-}"
BRANCH="${3:-main}"
source "$(dirname "$0")/common.sh"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if [[ -n "${GIT_URL}" ]]; then
  echo "cloning ${GIT_URL} (${BRANCH}) into ~/${REMOTE_DIR} on every worker" >&2
  tpu_ssh "${NAME}" all "
    if [[ -d ~/${REMOTE_DIR}/.git ]]; then
      git -C ~/${REMOTE_DIR} fetch --quiet origin $(printf '%q' "${BRANCH}")
      git -C ~/${REMOTE_DIR} checkout --quiet -B $(printf '%q' "${BRANCH}") FETCH_HEAD
    else
      git clone --quiet --branch $(printf '%q' "${BRANCH}") $(printf '%q' "${GIT_URL}") ~/${REMOTE_DIR}
    fi
    git -C ~/${REMOTE_DIR} log -1 --oneline"
else
  TARBALL="$(mktemp -d)/vlp_jax.tar.gz"
  trap 'rm -rf "$(dirname "${TARBALL}")"' EXIT
  # Files git knows of or would add, skipping deleted ones (tar would fail on them).
  (cd "${REPO_ROOT}" && git ls-files -z --cached --others --exclude-standard \
     | while IFS= read -r -d '' f; do if [[ -e "${f}" ]]; then printf '%s\0' "${f}"; fi; done \
     | tar --null -czf "${TARBALL}" -T -)
  echo "copying ${REPO_ROOT} ($(du -h "${TARBALL}" | cut -f1)) to every worker" >&2
  gcloud compute tpus tpu-vm scp "${TARBALL}" "${NAME}:vlp_jax_src.tar.gz" \
    "${GCLOUD_FLAGS[@]}" --worker=all
  tpu_ssh "${NAME}" all "
    mkdir -p ~/${REMOTE_DIR}
    tar -xzf ~/vlp_jax_src.tar.gz -C ~/${REMOTE_DIR}
    rm ~/vlp_jax_src.tar.gz"
fi

echo "creating ~/${REMOTE_DIR}/.venv (Python ${PYTHON_VERSION}) and installing '.[tpu]'" >&2
tpu_ssh "${NAME}" all "
  cd ~/${REMOTE_DIR}
  export PATH=\$HOME/.local/bin:\$PATH
  command -v uv >/dev/null || python3 -m pip install --quiet --user uv
  test -x .venv/bin/python || uv venv --quiet --python ${PYTHON_VERSION} .venv
  uv pip install --quiet --python .venv/bin/python -e '.[tpu]'"

if [[ "${CHECK:-1}" == 1 ]]; then
  # Every worker must run this at once: on a pod, jax waits for all hosts to join.
  echo "checking jax on every worker" >&2
  tpu_ssh "${NAME}" all "
    cd ~/${REMOTE_DIR}
    .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), \
jax.device_count(), jax.devices()[0].device_kind)'"
fi
echo "next: ZONE=${ZONE} tpu/launch.sh ${NAME} configs/clip_b16.py WORKDIR [--config.a.b=v ...]" >&2
