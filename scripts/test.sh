#!/usr/bin/env bash
# The whole test gate, as CI runs it: Debian packages, real services, then
# lint, type check and pytest. Every check runs even if an earlier one failed,
# so one CI run reports all problems; the exit code is non-zero if any failed.
# The services are always stopped, whatever happens.
#
# Usage: scripts/test.sh [PYTEST_ARG...]   (expects the venv to be installed;
# `make test` does that first). VENV overrides the virtualenv location.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bin=${VENV:-.venv}/bin

if [ ! -x "$bin/pytest" ]; then
    echo "test.sh: $bin/pytest missing; run 'make test' (it installs the venv)" >&2
    exit 1
fi

bash scripts/apt-deps.sh

state=$(mktemp -d "${TMPDIR:-/tmp}/thrifty-test-services.XXXXXX")
# EXIT covers normal ends and set -e aborts; turning INT/TERM into an exit
# makes Ctrl-C and CI time-outs go through the same cleanup.
trap 'bash scripts/services.sh down "$state"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
env_lines=$(bash scripts/services.sh up "$state")
eval "$env_lines"
echo "services up in $((SECONDS - started))s:"
echo "$env_lines" | sed 's/^/  /'
# Tests that need a service must fail here rather than skip silently.
export THRIFTY_REQUIRE_SERVICES=1

failed=()
summary=()
step() {
    local name=$1 rc=0 t0=$SECONDS
    shift
    echo
    echo "==> $name: $*"
    "$@" || rc=$?
    summary+=("$(printf '%-7s %-4s %4ss' "$name" "$([ "$rc" -eq 0 ] && echo ok || echo FAIL)" $((SECONDS - t0)))")
    if [ "$rc" -ne 0 ]; then
        echo "!! $name failed (exit $rc)"
        failed+=("$name")
    fi
}

# bench/ may not exist yet in a fresh clone (git keeps no empty folders), and
# ruff treats a missing path as an error.
lint_paths=()
for p in src tests bench; do
    [ -e "$p" ] && lint_paths+=("$p")
done

step ruff "$bin/ruff" check "${lint_paths[@]}"
step mypy "$bin/mypy"
# pytest's exit code 5 ("no tests collected") is non-zero, so it fails the run.
step pytest "$bin/python" -m pytest -q -p no:cacheprovider --durations=10 "$@"

echo
echo "==> summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all checks passed"
