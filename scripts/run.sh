#!/usr/bin/env bash
# Set-up command 1: install, then run the embedded default (local Kafka, SQLite, the stream worker,
# the API with the dashboard on http://127.0.0.1:8000, the simulator and the optimizer's workloads).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/install.sh"
exec gpucost up "$@"
