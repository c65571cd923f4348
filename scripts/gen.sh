#!/usr/bin/env bash
# Regenerates every committed Go file produced from a .capnp schema.
# Needs the capnp compiler (Debian: apt-get install capnproto); installs
# capnpc-go at the version go.mod pins into a temporary GOBIN.
set -euo pipefail
cd "$(dirname "$0")/.."
ver=$(go list -m -f '{{.Version}}' capnproto.org/go/capnp/v3)
std=$(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin go install "capnproto.org/go/capnp/v3/capnpc-go@$ver"
gen() { # gen DIR SCHEMA: writes DIR/<schema>.capnp.go
  local dir=$1 schema=$2
  (cd "$(dirname "$schema")" && PATH="$bin:$PATH" capnp compile -I "$std" -ogo:"$OLDPWD/$dir" "$(basename "$schema")")
}
gen conn/wire conn/wire/vatactor.capnp
gen interop interop/interop.capnp
gen samples/calculator/calculator samples/calculator/calculator.capnp
gen bench/schema bench/schema/bench.capnp
gofmt -l -w conn/wire interop samples bench/schema >/dev/null
