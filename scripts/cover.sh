#!/bin/bash
# Coverage of the connection (package conn, the shell, and conn/core, the
# protocol's core) by every test that drives it: conn's and the core's own
# tests, the simulation, and the socket tests of package actors.
#   scripts/cover.sh            prints the figures
#   scripts/cover.sh -html      and opens the report
set -euo pipefail
cd "$(dirname "$0")/.."
out=${COVER_OUT:-$(mktemp -t vatactor-cover.XXXXXX)}
go test -count=1 -coverpkg=./conn/,./conn/core -coverprofile="$out" \
	./conn/ ./conn/core ./internal/sim ./actors/ >/dev/null
# Each package's run counts every statement of both; a statement is
# covered when any run reached it.
awk -F'[: ,]' 'NR > 1 {
	key = $1 ":" $2 "," $3; n[key] = $4; if ($5 > 0) hit[key] = 1
	pkg[key] = ($1 ~ /\/conn\/core\//) ? "conn/core" : "conn"
}
END {
	for (k in n) { t[pkg[k]] += n[k]; all += n[k]; if (k in hit) { c[pkg[k]] += n[k]; call += n[k] } }
	for (p in t) printf "%-10s %5.1f%% of %d statements\n", p, 100 * c[p] / t[p], t[p]
	printf "%-10s %5.1f%% of %d statements\n", "both", 100 * call / all, all
}' "$out" | sort
if [[ "${1:-}" == -html ]]; then go tool cover -html="$out"; fi
