#!/usr/bin/env bash
# Regenerates every committed Go file produced from a .capnp schema, with
# scripts/capnp-go.sh (the capnpc-go version go.mod pins). Needs the capnp
# compiler (Debian: apt-get install capnproto).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/capnp-go.sh conn/wire/vatactor.capnp interop/interop.capnp \
  samples/calculator/calculator/calculator.capnp bench/schema/bench.capnp
