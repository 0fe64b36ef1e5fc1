#!/usr/bin/env bash
# The local demo: starts a Kubernetes API server, moto, the OpsWorks- and Systems Manager-compatible
# endpoint and four SSH hosts on loopback addresses, starts the controller, applies
# examples/local/*.yaml and shows the four sample hosts going to Registered (three with OpsWorks, one
# with Systems Manager); then says how to look around, and runs until
# stopped. Only loopback addresses are used.
#
#   bash tests/demo.sh          set up the machine (tests/setup.sh), build, and run the demo
#   bash tests/demo.sh stop     stop a demo running elsewhere (Ctrl-C where it runs does too)
#
# As root on a fresh Debian machine with Rust, Go and Python, as for the tests. The first run
# takes minutes (packages, the control plane built from its Go modules, the Rust build); a run
# after that starts in seconds. A second demo while one runs only says so.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Where the demo keeps its files (the same path the demo program uses).
state_dir=${TMPDIR:-/tmp}/instance-registrar-demo

running_pid() {
  local pid
  pid=$(cat "$state_dir/pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = local-env ] && echo "$pid"
}

case "${1:-run}" in
  run)
    # One demo at a time (the demo itself also refuses a second one, with a lock).
    if pid=$(running_pid); then
      echo "demo.sh: the demo is already running (pid $pid); \`bash tests/demo.sh stop\` stops it."
      if [ -s "$state_dir/look-around.txt" ]; then
        echo
        cat "$state_dir/look-around.txt"
      else
        echo "demo.sh: it is still starting; its files are in $state_dir"
      fi
      exit 0
    fi
    ;;
  stop)
    if ! pid=$(running_pid); then
      echo "demo.sh: no demo is running"
      exit 0
    fi
    echo "demo.sh: stopping the demo (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 300); do
      [ -e "/proc/$pid" ] || { echo "demo.sh: stopped"; exit 0; }
      sleep 0.1
    done
    echo "demo.sh: the demo (pid $pid) did not stop within 30s" >&2
    exit 1
    ;;
  *)
    echo "usage: bash tests/demo.sh [stop]" >&2
    exit 2
    ;;
esac

# What the demo needs only (the test suite's `bash tests/setup.sh` also builds helm).
bash tests/setup.sh --demo
echo "demo.sh: building the controller and the demo (the first build takes several minutes)" >&2
# The whole workspace's binaries in one build, so that dependencies are built with the same
# features as for `cargo test --workspace` (and once): the controller, the agent installer
# stand-in and the demo itself (tests/local-env), which finds the other two next to it.
cargo build --workspace --bins
target_dir=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/debug/local-env"
