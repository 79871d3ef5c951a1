#!/bin/sh
# The Debian packages each make target needs, installed when they are missing.
# usage: tools/system-deps.sh seeds|test|e2e        install what the target lacks (as root, with apt-get)
#        tools/system-deps.sh --list seeds|test|e2e print the target's packages, one a line
# Without root or apt-get it prints the one command that installs what is missing: for `test` the
# tests that need a package then skip, naming it; `seeds` and `e2e` cannot run without theirs.
set -eu
# One row a command: the command looked for, the package that brings it, the targets that need it.
TABLE='
apt-get            apt                 seeds test e2e
dpkg-deb           dpkg                seeds test e2e
openssl            openssl             test
ip                 iproute2            test e2e
nsenter            util-linux          test
blkid              util-linux          test
mountpoint         util-linux          test
blockdev           util-linux          test
lsblk              util-linux          test
losetup            mount               test
mount              mount               test
umount             mount               test
mkfs.ext4          e2fsprogs           test e2e
debugfs            e2fsprogs           test
mkfs.xfs           xfsprogs            test
isoinfo            genisoimage         test
cloud-init         cloud-init          test
systemd-analyze    systemd             test
git                git                 test
age                age                 test
age-keygen         age                 test
ssh-keygen         openssh-client      test e2e
curl               curl                test
kill               procps              test
promtool           prometheus          test
prometheus         prometheus          test
qemu-system-x86_64 qemu-system-x86     e2e
qemu-img           qemu-utils          e2e
mmdebstrap         mmdebstrap          e2e
ssh                openssh-client      e2e
chronyd            chrony              e2e
'
list=no
if [ "${1:-}" = --list ]; then list=yes; shift; fi
target=${1:-}
case "$target" in
  seeds|test|e2e) ;;
  *) echo "usage: $0 [--list] seeds|test|e2e" >&2; exit 2 ;;
esac
rows=$(echo "$TABLE" | awk -v t="$target" 'NF { for (i = 3; i <= NF; i++) if ($i == t) print $1, $2 }')
if [ "$list" = yes ]; then
  echo "$rows" | awk '{ print $2 }' | sort -u
  exit 0
fi
missing=$(echo "$rows" | while read -r command package; do
  command -v "$command" >/dev/null 2>&1 || echo "$package"
done | sort -u | tr '\n' ' ')
missing=${missing% }
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: make $target needs Debian packages that are missing; install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $missing" >&2
  [ "$target" = test ] && exit 0 || exit 1
fi
had_cloud_init=$(command -v cloud-init >/dev/null 2>&1 && echo yes || echo no)
had_prometheus=$(command -v prometheus >/dev/null 2>&1 && echo yes || echo no)
had_chrony=$(command -v chronyd >/dev/null 2>&1 && echo yes || echo no)
echo "installing Debian packages: $missing"
apt-get update -qq
# shellcheck disable=SC2086 # one word a package
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
