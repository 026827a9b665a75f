#!/usr/bin/env bash
# Installs the Debian programs the test suite runs for real (nginx, redis-server, chromium,
# openssl, curl, zstd, postgresql; Node and npm for tus-js-client and `make assets`, the dashboard's
# browser files). Idempotent: does nothing when they are all present.
# With program names as arguments (`install-system-deps.sh node npm`, what `make run` needs) only those.
set -euo pipefail

declare -A package_of=(
  [nginx]=nginx
  [redis-server]=redis-server
  [chromium]=chromium
  [openssl]=openssl
  [curl]=curl
  [zstd]=zstd
  [systemd-analyze]=systemd
  [logrotate]=logrotate
  [promtool]=prometheus
  [node]=nodejs
  [npm]=npm
)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${!package_of[@]}" initdb)
missing=()
for program in "${wanted[@]}"; do
  if [ "$program" = initdb ]; then
    # PostgreSQL's server programs are not on PATH: Debian puts them under /usr/lib/postgresql/<major>/bin.
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
    continue
  fi
  command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("${package_of[$program]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-system-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-system-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
