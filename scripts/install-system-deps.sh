#!/usr/bin/env bash
# System tools the deployment tests use, for Debian/Ubuntu machines, run as root:
#   docker-compose  Debian's v1 package: `docker-compose config` validates docker-compose.yml
#   promtool        from Debian's `prometheus` package: checks deploy/prometheus/*.yml
#   chromium        Debian's browser, driven headless by Playwright in tests/test_web_ui.py
# Idempotent: installs only what is missing and runs `apt-get update` at most once, only when
# something is missing. Elsewhere (not root, no apt-get) it says what to install and exits 0,
# so that `make test` still runs (tests/test_deploy.py skips the checks whose tool is absent);
# under CI (CI set) it exits 1 instead, since a green run there must not hide skipped tests.
set -euo pipefail

cannot_install() {
    echo "[parlance] $1: skipping system packages; install them yourself for the" \
        "deployment and browser tests: ${missing[*]}"
    if [ -n "${CI:-}" ]; then
        echo "[parlance] CI is set: failing rather than letting those tests skip" >&2
        exit 1
    fi
    exit 0
}

# command -> Debian package that provides it
declare -A PACKAGES=(
    [docker-compose]=docker-compose
    [promtool]=prometheus
    [chromium]=chromium
)

missing=()
for cmd in "${!PACKAGES[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("${PACKAGES[$cmd]}")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "[parlance] system dependencies present: ${!PACKAGES[*]}"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    cannot_install "not root"
fi
if ! command -v apt-get >/dev/null 2>&1; then
    cannot_install "no apt-get"
fi

echo "[parlance] installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Only promtool is wanted from `prometheus`: --no-install-recommends keeps node-exporter and
# friends out, and a policy-rc.d (when the host has none) keeps the package's daemon from
# starting on :9090, where the compose stack publishes its own Prometheus. The service stays
# installed but stopped; `systemctl start prometheus` if you do want it.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "[parlance] system dependencies installed: ${missing[*]}"
