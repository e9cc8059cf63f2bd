#!/usr/bin/env bash
# Run one pytest tier. Exit code 5 ("no tests collected") is reported as what it is: the
# selection matched nothing, which is neither a pass nor a test failure, and stops the run.
set -uo pipefail
tier=$1; shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
echo "== tier $tier: pytest $*"
"$root/.venv/bin/python" -m pytest "$@"
rc=$?
case $rc in
  0) echo "== tier $tier: passed" ;;
  5) echo "== tier $tier: NO TESTS COLLECTED (pytest exit 5): the selection '$*' matched nothing;" \
          "that is not a pass, fix the markers or the paths" >&2 ;;
  *) echo "== tier $tier: FAILED (pytest exit $rc)" >&2 ;;
esac
exit $rc
