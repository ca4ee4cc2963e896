#!/usr/bin/env bash
# Installs what is missing (apt and pip, idempotently) and runs the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k posix -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install.sh
"$(cat .ckptfs-python)" -m pytest -q -p no:cacheprovider --durations=10 "$@"
