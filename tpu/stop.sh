#!/usr/bin/env bash
# Stops the run that tpu/launch.sh started, on every worker: sends SIGTERM to the process
# recorded in ~/$REMOTE_DIR/logs/main.pid, which makes main.py save a checkpoint and exit.
# Rerun tpu/launch.sh with the same CONFIG and WORKDIR to resume.
#
# Usage:
#   ZONE=us-central2-b [PROJECT=...] tpu/stop.sh NAME
#
# Settings (environment variables): ZONE (required), PROJECT, REMOTE_DIR (see common.sh).
set -euo pipefail

if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
NAME="$1"
source "$(dirname "$0")/common.sh"

tpu_ssh "${NAME}" all "
  pidfile=~/${REMOTE_DIR}/logs/main.pid
  if [[ -f \${pidfile} ]] && kill -0 \$(cat \${pidfile}) 2>/dev/null; then
    kill -TERM \$(cat \${pidfile})
    echo \"\$(hostname): sent SIGTERM to pid \$(cat \${pidfile})\"
  else
    echo \"\$(hostname): no run in progress\"
  fi"
