#!/usr/bin/env bash
# deploy/demo.sh — run paystream end to end with nothing installed: an embedded broker, the
# traffic generator, one instance and its HTTP API. Arguments go to `paystream demo`
# (e.g. `deploy/demo.sh --orders 50000 --http-addr 127.0.0.1:9000`; `--help` lists them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/paystream/target}"
bash deploy/setup.sh --build-only
exec cargo run --quiet --bin paystream -- demo "$@"
