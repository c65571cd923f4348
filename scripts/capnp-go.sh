#!/usr/bin/env bash
# Generates Go code from Cap'n Proto schemas, in the module you run it
# from: each SCHEMA.capnp gets SCHEMA.capnp.go beside it. It uses the
# capnpc-go of the capnproto.org/go/capnp/v3 version your go.mod requires
# (installed into a temporary directory) and that version's std directory
# for "/go.capnp", so the generated code matches the library you build
# with.
#
#   bash scripts/capnp-go.sh path/to/greeter.capnp [more.capnp …]
#
# Outside this repository, run vatactor's copy from the module cache:
#
#   go get github.com/vatactor/vatactor capnproto.org/go/capnp/v3
#   bash "$(go list -m -f '{{.Dir}}' github.com/vatactor/vatactor)/scripts/capnp-go.sh" greeter/greeter.capnp
#
# A schema names its Go package and import path with two annotations:
#
#   using Go = import "/go.capnp";
#   $Go.package("greeter");
#   $Go.import("example.com/you/greeter");
#
# Needs the capnp compiler (Debian: apt-get install capnproto).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 SCHEMA.capnp [...]" >&2; exit 2; }
command -v capnp >/dev/null || { echo "$0: needs the capnp compiler (Debian: apt-get install capnproto)" >&2; exit 1; }
if ! ver=$(go list -m -f '{{.Version}}' capnproto.org/go/capnp/v3 2>/dev/null) || [ -z "$ver" ]; then
  echo "$0: run it in a module that requires capnproto.org/go/capnp/v3 (go get capnproto.org/go/capnp/v3)" >&2
  exit 1
fi
go mod download capnproto.org/go/capnp/v3
std=$(go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin go install "capnproto.org/go/capnp/v3/capnpc-go@$ver"
for schema in "$@"; do
  (cd "$(dirname "$schema")" && PATH="$bin:$PATH" capnp compile -I "$std" -ogo "$(basename "$schema")")
  gofmt -w "$schema.go"
  echo "wrote $schema.go"
done
