#!/usr/bin/env bash
# Builds kryoptic (a PKCS#11 software token written in Rust) as libkryoptic_pkcs11.so, the
# second token the PKCS#11 tests run against, and prints the library's path. The build is
# cached: KRYOPTIC_CACHE (default ~/.cache/token-service/kryoptic-VERSION) keeps the result.
#
# Needs Debian's libclang-dev, libssl-dev, libsqlite3-dev and pkg-config (scripts/test.sh
# installs them). Source comes from the crate registry through cargo, no other download.
set -euo pipefail

version=1.5.4
cache=${KRYOPTIC_CACHE:-$HOME/.cache/token-service/kryoptic-$version}
library="$cache/libkryoptic_pkcs11.so"
if [ -f "$library" ]; then
    echo "$library"
    exit 0
fi
mkdir -p "$cache"

# Let cargo fetch the crate's source into its registry, then build a private copy of it.
fetcher="$cache/fetch"
mkdir -p "$fetcher/src"
cat >"$fetcher/Cargo.toml" <<TOML
[package]
name = "kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
kryoptic = { version = "=$version", default-features = false, features = ["minimal"] }
TOML
echo 'fn main() {}' >"$fetcher/src/main.rs"
(cd "$fetcher" && cargo fetch --quiet) >&2
registry_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/kryoptic-$version | head -n 1)
rm -rf "$cache/src"
cp -r "$registry_src" "$cache/src"

echo "building kryoptic $version (about two minutes, once)" >&2
(
    cd "$cache/src"
    CARGO_TARGET_DIR="$cache/target" cargo build --release --quiet \
        --no-default-features --features minimal,kryoptic-lib/dynamic
) >&2
cp "$cache/target/release/libkryoptic_pkcs11.so" "$library"
echo "$library"
