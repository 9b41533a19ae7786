#!/bin/bash
# Drives the running reference (`node server.mjs`) with autocannon (C=32 connections, D=10
# seconds) and prints tokens/s, latency and the server's CPU time per token.
# usage: load.sh cc   (client_credentials: an access token, nothing stored)
#        load.sh rt   (as GenerateTokens: a grant, an access token and a refresh token, stored)
set -euo pipefail
case "${1:-cc}" in
  cc) body='grant_type=client_credentials&scope=api' ;;
  rt) body='grant_type=urn%3Abench%3Aissue' ;;
  *) echo "usage: $0 cc|rt" >&2; exit 2 ;;
esac
pid=$(pgrep -f "node server.mjs" | head -1)
[ -n "$pid" ] || { echo "start it first: node server.mjs" >&2; exit 1; }
t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
out=$(npx autocannon -c "${C:-32}" -d "${D:-10}" -m POST \
  -H 'content-type=application/x-www-form-urlencoded' \
  -H 'authorization=Basic YmVuY2g6YmVuY2gtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=' \
  -b "$body" --json http://127.0.0.1:3000/token 2>/dev/null)
t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
ticks=$(getconf CLK_TCK)
echo "$out" | python3 -c "
import json, sys
d = json.load(sys.stdin); ok = d['2xx']; secs = d['duration']; cpu = ($t1 - $t0) / $ticks
print(f\"node reference ($1): {ok} tokens in {secs:.1f} s: {ok/secs:.0f} tokens/s, non-2xx {d['non2xx']}, errors {d['errors']}, p50 {d['latency']['p50']} ms p99 {d['latency']['p99']} ms; server CPU {cpu:.2f} s, {1000*cpu/ok:.3f} ms per token\")"
