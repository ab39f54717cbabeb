#!/usr/bin/env bash
# Install the Debian packages the test suite needs (real Redis, PostgreSQL and
# a headless Chromium). CI runs on a fresh machine where nothing but the
# project's own files installs these, so this must work unattended; locally it
# must be near-instant once everything is present, hence the dpkg check first.
#
# Usage: scripts/apt-deps.sh [PACKAGE...]   (defaults to the test packages)
set -euo pipefail

packages=("$@")
if [ ${#packages[@]} -eq 0 ]; then
    # chromium-driver is left out on purpose: tests drive Chromium through
    # Playwright (executable_path=/usr/bin/chromium), not Selenium.
    packages=(redis-server postgresql chromium)
fi

missing=()
for pkg in "${packages[@]}"; do
    # "install ok installed" distinguishes a real install from a removed
    # package whose config files linger (dpkg -s succeeds for those too).
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "apt-deps: installing ${missing[*]}" >&2

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo -n)
    else
        echo "apt-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

# Debian's postinst scripts start redis-server and a system PostgreSQL cluster
# on their default ports. The tests start their own instances on free ports,
# and a system daemon would outlive the run, so forbid service starts for the
# duration of the install unless the machine already has a policy in place.
policy=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        "${sudo[@]}" rm -f "$policy"
    fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
# apt is chatty; keep its output out of the test log unless something fails.
log=$(mktemp)
trap 'cleanup; rm -f "$log"' EXIT
run_quiet() {
    if ! "$@" </dev/null >>"$log" 2>&1; then
        cat "$log" >&2
        echo "apt-deps: failed: $*" >&2
        exit 1
    fi
}
# Package lists on a fresh machine may be stale or empty: refresh once.
run_quiet "${sudo[@]}" apt-get update
run_quiet "${sudo[@]}" apt-get install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"
echo "apt-deps: installed ${missing[*]}" >&2
