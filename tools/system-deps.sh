#!/bin/sh
# Install the Debian packages a make target needs, when they are missing.
# usage: tools/system-deps.sh test|e2e
# Without root or apt-get it only names what is missing: for `test` the tests
# that need it skip with that reason; `e2e` cannot run without them.
set -eu
case "${1:-}" in
  test) need="openssl:openssl ip:iproute2 isoinfo:genisoimage cloud-init:cloud-init git:git blkid:util-linux age:age promtool:prometheus" ;;
  e2e) need="qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs ssh:openssh-client ssh-keygen:openssh-client ip:iproute2 chronyd:chrony" ;;
  *) echo "usage: $0 test|e2e" >&2; exit 2 ;;
esac
missing=""
for pair in $need; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: missing Debian packages:$missing (install them as root with apt-get)" >&2
  [ "$1" = test ] && exit 0 || exit 1
fi
had_cloud_init=$(command -v cloud-init >/dev/null 2>&1 && echo yes || echo no)
had_prometheus=$(command -v prometheus >/dev/null 2>&1 && echo yes || echo no)
had_chrony=$(command -v chronyd >/dev/null 2>&1 && echo yes || echo no)
echo "installing Debian packages:$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
# Prometheus is here for promtool and for a test that runs it in a private namespace: not as this host's service.
if [ "$had_prometheus" = no ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
# chrony is here as the VM test's time server, run in a private namespace: it must not set this host's clock.
if [ "$had_chrony" = no ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now chrony.service >/dev/null 2>&1 || true
fi
# cloud-init is here only for `cloud-init schema`: keep it from configuring this host at its next boot.
if [ "$had_cloud_init" = no ] && command -v cloud-init >/dev/null 2>&1; then
  mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
fi
