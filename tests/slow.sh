#!/usr/bin/env bash
# tests/slow.sh: the cases that do not fit CI's 30 minutes on 2 cores, or need root, in one command.
#
#     sudo tests/slow.sh            # everything
#     tests/slow.sh                 # without root: the root-only parts say SKIPPED and the rest runs
#
#  1. the full chaos run (60 s of random SIGKILLs under load), release build;
#  2. the abuse cases in strict mode (abused p99 within 2× of calm, one attempt), release build;
#  3. the silent partition (network namespaces; also in CI, where it skips loudly without root);
#  4. tests/multihost.sh: five namespaces with delay and loss, a partition and its heal.
# Exits non-zero if any part fails; prints one line per part at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
declare -a RESULTS=()
run() {  # run NAME CMD...
    local name=$1; shift
    echo "=== $name: $*"
    if "$@"; then RESULTS+=("ok      $name"); else RESULTS+=("FAILED  $name"); fi
}
cargo build --release || exit 1
run "chaos, 60 s" env CHAOS_SECS=60 cargo test --release --test chaos -- --nocapture
run "abuse, strict" env HERD_ABUSE_STRICT=1 cargo test --release --test abuse -- --nocapture --test-threads 1
run "silent partition" cargo test --release --test partition -- --nocapture
if [[ $(id -u) == 0 ]]; then
    run "multihost" tests/multihost.sh
else
    echo "*** SKIPPED multihost: needs root (sudo tests/slow.sh) ***"
    RESULTS+=("SKIPPED multihost (needs root)")
fi
printf '%s\n' "${RESULTS[@]}"
! printf '%s\n' "${RESULTS[@]}" | grep -q '^FAILED'
