#!/usr/bin/env bash
# Makes a SoftHSM token for token-service from nothing, in its own directory (never the
# system's SoftHSM configuration), and prints the environment to export.
#
#   scripts/softhsm-setup.sh [--generate-keys] [DIR]      (DIR defaults to ./softhsm)
#
# Environment: TOKEN_LABEL (default token-service), SO_PIN and USER_PIN (default: random,
# written to DIR/so-pin and DIR/user-pin, mode 0600). Safe to run twice: an existing token
# with the label is kept, with its PIN file. --generate-keys then runs
# `token-service keys generate` for the signing and cache keys of config/hsm-airgapped.toml
# (binary from TOKEN_SERVICE_BIN, default target/release/token-service).
set -euo pipefail

generate_keys=0
if [ "${1:-}" = "--generate-keys" ]; then
    generate_keys=1
    shift
fi
dir=${1:-${SOFTHSM_DIR:-$PWD/softhsm}}
label=${TOKEN_LABEL:-token-service}

command -v softhsm2-util >/dev/null || {
    echo "softhsm2-util not found: install the Debian package softhsm2" >&2
    exit 1
}
module=""
for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -f "$candidate" ]; then
        module=$candidate
        break
    fi
done
[ -n "$module" ] || { echo "libsofthsm2.so not found" >&2; exit 1; }

umask 077
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
if [ ! -f "$conf" ]; then
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
        "$dir/tokens" >"$conf"
fi
export SOFTHSM2_CONF=$conf

random_pin() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

if softhsm2-util --show-slots | grep -Eq "^[[:space:]]*Label:[[:space:]]+$label[[:space:]]*$"; then
    echo "token '$label' already exists in $dir/tokens; keeping it" >&2
    [ -f "$dir/user-pin" ] || { echo "but $dir/user-pin is missing" >&2; exit 1; }
else
    so_pin=${SO_PIN:-$(random_pin)}
    user_pin=${USER_PIN:-$(random_pin)}
    softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$user_pin" >&2
    printf '%s\n' "$so_pin" >"$dir/so-pin"
    printf '%s\n' "$user_pin" >"$dir/user-pin"
    chmod 600 "$dir/so-pin" "$dir/user-pin"
    echo "token '$label' initialised in $dir/tokens" >&2
fi

if [ "$generate_keys" = 1 ]; then
    bin=${TOKEN_SERVICE_BIN:-target/release/token-service}
    profile=$(dirname "$0")/../config/hsm-airgapped.toml
    export PKCS11_MODULE=$module PKCS11_TOKEN_LABEL=$label PKCS11_PIN_FILE=$dir/user-pin
    "$bin" --config "$profile" keys generate --name signing --algorithm ES256 >&2 || true
    "$bin" --config "$profile" keys generate --namespace token-cache --name aes --algorithm A256GCM >&2 || true
fi

cat <<EXPORTS
export SOFTHSM2_CONF=$conf
export PKCS11_MODULE=$module
export PKCS11_TOKEN_LABEL=$label
export PKCS11_PIN_FILE=$dir/user-pin
EXPORTS
