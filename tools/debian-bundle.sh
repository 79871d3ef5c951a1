#!/bin/sh
# Pack Debian's etcd-server and etcd-client of one suite as an upstream-style release tarball.
# usage: tools/debian-bundle.sh SUITE OUT.tar.gz   (e.g. trixie vendor/etcd-v3.5.16-linux-amd64.tar.gz)
# apt-get reads the suite through a sources list and state directory of its own under
# vendor/apt-SUITE/: the host's apt configuration is not touched and nothing is installed.
set -eu
suite=${1:?usage: debian-bundle.sh SUITE OUT.tar.gz}
out=${2:?usage: debian-bundle.sh SUITE OUT.tar.gz}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
state=vendor/apt-$suite
rm -rf "$state/debs" && mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/debs"
echo "deb http://deb.debian.org/debian $suite main" > "$state/sources.list"
set -- -o "Dir::Etc::SourceList=$PWD/$state/sources.list" -o Dir::Etc::SourceParts=/dev/null \
  -o "Dir::State::Lists=$PWD/$state/lists" -o "Dir::Cache=$PWD/$state/cache" -o APT::Sandbox::User=root
apt-get "$@" -qq update
(cd "$state/debs" && apt-get "$@" -qq download etcd-server etcd-client)
"$python" "$here/etcd_bundle.py" --debs "$state/debs" "$out"
