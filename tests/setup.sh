#!/usr/bin/env bash
# Installs and builds what the test suite needs, idempotently, on a fresh Debian machine as root
# (or as a user who already has the packages): Debian packages, and the Kubernetes control plane
# built from its Go modules into a cache outside the repository. Safe to run again: what is
# already there is kept.
#
#   bash tests/setup.sh            everything the test suite needs
#   bash tests/setup.sh --demo     only what the demo needs (no helm, no node: they are for the chart
#                                  and pod tests)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for_demo=
case "${1:-}" in
  --demo) for_demo=1 ;;
  "") ;;
  *) echo "usage: bash tests/setup.sh [--demo]" >&2; exit 2 ;;
esac

# Debian packages: ssh-keygen and ssh (test keys, the SSH client), setpriv and unshare (test
# processes die with the test binary; each test SSH host has its own mount namespace), sshd and
# sudo (the test SSH hosts), curl (the agent installer stand-in), lua5.1 (the Argo CD health
# check's tests: Argo CD's gopher-lua is a Lua 5.1). tar, gzip and coreutils, which the stand-in
# also uses, are Essential in Debian and always there. libfaketime: a leader-election test runs a
# standby whose clock runs ahead.
packages=(openssh-client openssh-server sudo util-linux curl lua5.1 libfaketime)
# The pod tests' nodes (tests/node.rs): containerd and runc run the Pods (the CNI plugins only so
# that containerd calls its network ready: the Pods use the host's network), buildah and
# mmdebstrap make the images from the Dockerfile and Debian packages (tests/node/images.sh), ip
# gives each node an address. The demo does without.
if [ -z "$for_demo" ]; then
  packages+=(containerd runc buildah containernetworking-plugins mmdebstrap iproute2)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  # The tests start sshd servers of their own on loopback addresses: installing openssh-server
  # must not start the system's ssh service. A policy-rc.d that says no (101) keeps the package
  # scripts from starting it, in a container or on a systemd host; one already there is kept.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# Put here by instance-registrar tests/setup.sh while installing packages.\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$made_policy" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi

# The login users of the test SSH hosts, with passwordless sudo (the agent installer runs as root
# through sudo, as on a real host). The hosts' sshd servers are the tests' own; a system ssh
# service, if one runs, is neither needed nor touched. The users have no password ("*"), but are
# not locked ("!", useradd's default): without PAM, sshd refuses even key logins to a locked
# account. opsworks-test is the one the tests use; opsworks-tty's sudo runs only from a terminal
# (`requiretty`, as some RHEL and Amazon Linux images had it), for the tests of such hosts. Each
# user's sudo rules are in a file of its own, so `requiretty` applies to opsworks-tty only.
ensure_test_user() {
  local test_user=$1 sudoers_text=$2
  local sudoers=/etc/sudoers.d/$test_user
  locked() { getent shadow "$test_user" | cut -d: -f2 | grep -q '^!'; }
  user_ready() {
    id -u "$test_user" >/dev/null 2>&1 || return 1
    # Only root can read the shadow and sudoers files: others check what they can.
    if [ "$(id -u)" -ne 0 ]; then
      [ -e "$sudoers" ]
      return
    fi
    ! locked && [ "$(cat "$sudoers" 2>/dev/null)" = "$sudoers_text" ] && [ "$(stat -c %a "$sudoers")" = 440 ]
  }
  user_ready && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: the test user $test_user or $sudoers is missing (run as root)" >&2
    exit 1
  fi
  if ! id -u "$test_user" >/dev/null 2>&1; then
    echo "setup.sh: creating the test user $test_user" >&2
    useradd -m -s /bin/bash -p '*' "$test_user"
  elif locked; then
    usermod -p '*' "$test_user"
  fi
  echo "setup.sh: writing $sudoers" >&2
  printf '%s\n' "$sudoers_text" >"$sudoers.partial"
  chmod 0440 "$sudoers.partial"
  visudo -cqf "$sudoers.partial" || { rm -f "$sudoers.partial"; echo "setup.sh: $sudoers is not valid" >&2; exit 1; }
  mv -f "$sudoers.partial" "$sudoers"
}
ensure_test_user opsworks-test "opsworks-test ALL=(ALL) NOPASSWD: ALL"
ensure_test_user opsworks-tty "Defaults:opsworks-tty requiretty
opsworks-tty ALL=(ALL) NOPASSWD: ALL"

for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "setup.sh: $tool is needed" >&2; exit 1; }
done

cache_root=${INSTANCE_REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar}

# moto's server (the AWS mock for IAM, EC2 and STS the OpsWorks-compatible endpoint checks
# credentials against), pinned, in a venv of its own; and the OpsWorks and Systems Manager (SSM)
# service models from the botocore 1.34.0 wheel (the last botocore line with OpsWorks), for the
# model-conformance tests.
moto_version=5.2.5
botocore_version=1.34.0
python_dir="$cache_root/python"
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "setup.sh: python3 is needed" >&2; exit 1; }
if ! "$python_dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$moto_version')" 2>/dev/null \
   || [ ! -x "$python_dir/bin/moto_server" ]; then
  echo "setup.sh: installing moto[server]==$moto_version into $python_dir" >&2
  if ! "$python" -c "import ensurepip, venv" 2>/dev/null; then
    # Debian's own python3 keeps venv's pip bootstrap in a separate package.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      echo "setup.sh: $python cannot make a venv (install python3-venv)" >&2
      exit 1
    fi
  fi
  # A venv left half-made by an interrupted run is made again.
  "$python_dir/bin/python" -m pip --version >/dev/null 2>&1 || "$python" -m venv --clear "$python_dir"
  "$python_dir/bin/python" -m pip install -q --disable-pip-version-check "moto[server]==$moto_version"
fi
model_dir="$cache_root/botocore-$botocore_version/opsworks/2013-02-18"
ssm_model_dir="$cache_root/botocore-$botocore_version/ssm/2014-11-06"
if [ ! -s "$model_dir/service-2.json" ] || [ ! -s "$model_dir/waiters-2.json" ] \
   || [ ! -s "$ssm_model_dir/service-2.json" ]; then
  echo "setup.sh: extracting the OpsWorks and SSM service models from botocore $botocore_version" >&2
  wheels="$cache_root/botocore-$botocore_version/wheel"
  mkdir -p "$wheels" "$model_dir" "$ssm_model_dir"
  ls "$wheels"/botocore-"$botocore_version"-*.whl >/dev/null 2>&1 \
    || "$python_dir/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
         --only-binary=:all: -d "$wheels" "botocore==$botocore_version"
  "$python_dir/bin/python" - "$wheels" "$model_dir" "$ssm_model_dir" <<'PY'
import glob, gzip, os, sys, zipfile
wheels, opsworks_out, ssm_out = sys.argv[1], sys.argv[2], sys.argv[3]
(wheel,) = glob.glob(os.path.join(wheels, "botocore-*.whl"))
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    for prefix, out in (("botocore/data/opsworks/2013-02-18/", opsworks_out),
                        ("botocore/data/ssm/2014-11-06/", ssm_out)):
        for name in ("service-2.json", "waiters-2.json", "paginators-1.json"):
            if prefix + name in names:
                data = z.read(prefix + name)
            elif prefix + name + ".gz" in names:
                data = gzip.decompress(z.read(prefix + name + ".gz"))
            else:
                continue
            tmp = os.path.join(out, name + ".partial")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(out, name))
PY
fi
echo "setup.sh: moto_server in $python_dir/bin, OpsWorks model in $model_dir, SSM model in $ssm_model_dir" >&2

# parliament (duo-labs), pinned, in a venv of its own: it checks the controller's IAM policy
# against the IAM actions, resource types and condition keys AWS publishes (tests/iam_policy.rs).
# The demo does without.
parliament_version=1.6.4
parliament_dir="$cache_root/parliament"
if [ -z "$for_demo" ] && ! "$parliament_dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('parliament') != '$parliament_version')" 2>/dev/null; then
  echo "setup.sh: installing parliament==$parliament_version into $parliament_dir" >&2
  "$parliament_dir/bin/python" -m pip --version >/dev/null 2>&1 || "$python" -m venv --clear "$parliament_dir"
  "$parliament_dir/bin/python" -m pip install -q --disable-pip-version-check "parliament==$parliament_version"
fi

# kube-apiserver, etcd and kubectl (minutes the first time, then cached).
dir=$("$here/control-plane/build.sh")
echo "setup.sh: control plane binaries in $dir" >&2

# helm, for the chart's tests (a minute the first time, then cached); the demo does without.
if [ -z "$for_demo" ]; then
  helm=$("$here/helm/build.sh")
  echo "setup.sh: helm in $helm" >&2
fi

# The pod tests' node: kubelet, kube-controller-manager and kube-scheduler from the same Go
# module as the control plane (minutes the first time, then cached), and the images' Debian base
# root file system (mmdebstrap, cached); the demo does without.
if [ -z "$for_demo" ]; then
  node=$("$here/control-plane/build.sh" --node)
  echo "setup.sh: kubelet, kube-controller-manager and kube-scheduler in $node" >&2
  base=$(bash "$here/node/images.sh" base)
  echo "setup.sh: the images' base root file system in $base" >&2
fi
