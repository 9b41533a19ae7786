#!/usr/bin/env bash
# The README's test command: installs what the test suite needs, then runs all of it.
#
# Tests start their own dependency processes on free loopback ports and stop them; nothing
# has to be running beforehand. With CI=true a missing dependency fails the run instead of
# skipping the tests that need it.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests need: SoftHSM for the PKCS#11 tests, Redis for the store tests,
# what building kryoptic (the second PKCS#11 token) takes, and Python for the KMS server.
APT_PACKAGES=(softhsm2 redis-server libclang-dev libssl-dev libsqlite3-dev pkg-config python3 python3-venv)

install_apt_packages() {
    local missing=()
    for package in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_apt_packages

log "building kryoptic (cached after the first run)"
KRYOPTIC_MODULE=$(bash scripts/build-kryoptic.sh)
export KRYOPTIC_MODULE

# The KMS-compatible server (moto) in a virtualenv of its own, cached; the launcher in
# scripts/moto-kms-server.py patches moto 5.2's internals, hence the pinned minor version.
MOTO_VENV="${MOTO_VENV:-$HOME/.cache/token-service/moto-venv}"
if ! "$MOTO_VENV/bin/python" -c 'import moto.server, moto.kms' 2>/dev/null; then
    log "installing moto[server] into $MOTO_VENV"
    python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.2,<5.3'
fi
export MOTO_PYTHON="$MOTO_VENV/bin/python"

command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }

output=$(mktemp)
trap 'rm -f "$output"' EXIT

# A hung test fails the run within a bound, with its name in the log (the harness prints
# "has been running for over 60 seconds"), instead of holding CI until CI's own limit.
# The bound includes building the tests.
with_limit() {
    local minutes=$1
    shift
    local status=0
    timeout --kill-after=30s "${minutes}m" "$@" || status=$?
    if [ "$status" -eq 124 ]; then
        echo "==> stopped after ${minutes} min: $*" >&2
    fi
    return "$status"
}

log "cargo test --doc"
with_limit 15 cargo test --locked --doc 2>&1 | tee -a "$output"
log "cargo test (all targets: library, binary, integration and property tests; benches in quick mode)"
with_limit 55 cargo test --locked --all-targets 2>&1 | tee -a "$output"

# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\nTotal: %d passed, %d failed, %d skipped\n", p, f, s; if (p == 0) exit 1 }' "$output"
