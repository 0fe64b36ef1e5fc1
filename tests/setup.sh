#!/usr/bin/env bash
# Installs and builds what the test suite needs, idempotently, on a fresh Debian machine as root
# (or as a user who already has the packages): Debian packages, and the Kubernetes control plane
# built from its Go modules into a cache outside the repository. Safe to run again: what is
# already there is kept.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Debian packages: ssh-keygen (test keys), setpriv (test processes die with the test binary).
packages=(openssh-client util-linux)
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
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "setup.sh: $tool is needed" >&2; exit 1; }
done

cache_root=${INSTANCE_REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar}

# moto's server (the AWS mock for IAM, EC2 and STS the OpsWorks-compatible endpoint checks
# credentials against), pinned, in a venv of its own; and the OpsWorks service model from the
# botocore 1.34.0 wheel (the last botocore line with OpsWorks), for the model-conformance tests.
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
if [ ! -s "$model_dir/service-2.json" ] || [ ! -s "$model_dir/waiters-2.json" ]; then
  echo "setup.sh: extracting the OpsWorks service model from botocore $botocore_version" >&2
  wheels="$cache_root/botocore-$botocore_version/wheel"
  mkdir -p "$wheels" "$model_dir"
  ls "$wheels"/botocore-"$botocore_version"-*.whl >/dev/null 2>&1 \
    || "$python_dir/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
         --only-binary=:all: -d "$wheels" "botocore==$botocore_version"
  "$python_dir/bin/python" - "$wheels" "$model_dir" <<'PY'
import glob, gzip, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(wheels, "botocore-*.whl"))
prefix = "botocore/data/opsworks/2013-02-18/"
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
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
echo "setup.sh: moto_server in $python_dir/bin, OpsWorks model in $model_dir" >&2

# kube-apiserver, etcd and kubectl (minutes the first time, then cached).
dir=$("$here/control-plane/build.sh")
echo "setup.sh: control plane binaries in $dir" >&2
