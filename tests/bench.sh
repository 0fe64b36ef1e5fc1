#!/usr/bin/env bash
# The performance benchmark (issue 7): the controller against `aws opsworks register` (AWS CLI v1)
# on the local environment (control plane, moto, the OpsWorks-compatible endpoint with the agent
# installer stand-in, SSH hosts), all on loopback. Prints a table of medians.
#
#   bash tests/bench.sh [--release] [bench flags]
#
#   --release                 measure a release build of the controller (the first build takes
#                             many minutes: the AWS SDKs); without it, the debug build
#   --hosts N                 hosts in the throughput runs (default 50)
#   --run-time SECONDS        the installer stand-in's run time T (default 3)
#   --runs R                  runs per measurement, medians reported (default 3)
#   --steady N[,N...]         objects in the steady-state runs (default 1000,5000)
#   --cli-parallel P          CLI processes at a time in the parallel CLI runs (default 16)
#   --cli-sequential-hosts N  hosts in a sequential CLI run (default all; fewer is scaled up)
#   --fleet N                 hosts in the fleet run (default 500; one sshd each, all applied
#                             at once, the controller's --ssh-concurrency N)
#   --fleet-run-time SECONDS  the installer stand-in's run time in the fleet run (default 30;
#                             the other runs keep --run-time)
#   --throttled-hosts N       hosts in the throttled wave (default 200, 0: none; one sshd each, all
#                             applied at once, the controller's default --aws-calls-per-second
#                             and --ssh-concurrency N, the proxy taking 5 iam:CreateAccessKey a
#                             second)
#   --throttled-calls-per-second RATE  the throttled wave's controller's --aws-calls-per-second
#                             (default: the controller's default)
#   --skip LIST               any of throughput,cli,steady,latency,throttled,fleet
#
# As root on a fresh Debian machine with Rust, Go and Python, as for the tests. The AWS CLI
# (PyPI awscli==1.32.0, the last series with `opsworks register`) goes into a venv under
# ~/.cache/instance-registrar.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

release=
if [ "${1:-}" = --release ]; then
  release=1
  shift
fi

bash tests/setup.sh

venv=${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar/awscli-venv
if ! "$venv/bin/aws" --version 2>&1 | grep -q '^aws-cli/1\.32\.0 '; then
  echo "bench.sh: installing awscli==1.32.0 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'awscli==1.32.0'
fi

echo "bench.sh: building (the first build takes several minutes)" >&2
# The workspace's binaries in debug, as for the tests and the demo: the benchmark, the controller
# and the agent installer stand-in (found next to the benchmark).
cargo build --workspace --bins
target_dir=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [ -n "$release" ]; then
  cargo build --release -p instance-registrar --bin instance-registrar
  export INSTANCE_REGISTRAR_BIN=$target_dir/release/instance-registrar
fi
exec "$target_dir/debug/bench" --aws-cli "$venv/bin/aws" "$@"
