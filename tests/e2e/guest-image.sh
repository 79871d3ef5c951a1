#!/bin/sh
# Build (or reuse) a minimal Debian guest for the VM test: kernel, initrd and an ext4 root disk.
# usage: tests/e2e/guest-image.sh [bookworm|trixie]   -> prints the directory holding vmlinuz, initrd.img,
#        root.img, under $XDG_CACHE_HOME/etcd-seed (~/.cache/etcd-seed)
# bookworm: Debian 12 with ifupdown, as the first VM test used. trixie: Debian 13 the way its cloud
# images are: cloud-init 25, netplan with systemd-networkd, no ifupdown, curl, a system locale.
# Both carry systemd-timesyncd, the time daemon cloud-init's ntp module configures when a spec sets network.ntp,
# and e2fsprogs (the data disk's mkfs.ext4), as Debian's cloud images do: Debian 13's minbase lacks it, 12's has it.
# Each image is cached, keyed by this script's contents and the suite.
set -eu
cache=${XDG_CACHE_HOME:-$HOME/.cache}/etcd-seed
suite=${1:-bookworm}
common=systemd,systemd-sysv,udev,dbus,cloud-init,linux-image-cloud-amd64,iproute2,netbase,ca-certificates,openssl,locales,openssh-server,sudo,systemd-timesyncd,e2fsprogs
case "$suite" in
  # cloud-init without ifupdown leaves the NIC down on Debian 12.
  bookworm) packages=$common,ifupdown ;;
  trixie) packages=$common,netplan.io,systemd-resolved,curl ;;
  *) echo "unknown suite: $suite" >&2; exit 2 ;;
esac
key=$(cat "$0" | sha256sum | cut -c1-16)
dir="$cache/guest-$suite-$key"
if [ -f "$dir/root.img" ]; then echo "$dir"; exit 0; fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# /dev/vda is the root disk qemu gives. A system locale, as Debian's cloud images have: without one
# cloud-init's locale module runs locale-gen, which on Debian ignores its argument, and reports an error.
# The root disk is not partitioned: growpart and resizefs would only report a failure of their own.
# The image's own housekeeping is masked: e2scrub_reap took the one vCPU for 80 s of each boot under TCG, and
# the timers would start work at random in a scenario; none of them is the product's.
mmdebstrap --quiet --variant=minbase --include="$packages" \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
  --customize-hook='rm -f "$1/etc/hostname"' \
  --customize-hook='echo LANG=C.UTF-8 > "$1/etc/default/locale"' \
  --customize-hook='printf "growpart: {mode: \"off\"}\nresize_rootfs: false\n" > "$1/etc/cloud/cloud.cfg.d/90-no-grow.cfg"' \
  --customize-hook='if [ -x "$1/usr/sbin/netplan" ]; then chroot "$1" systemctl enable systemd-networkd systemd-resolved; fi' \
  --customize-hook='chroot "$1" systemctl mask e2scrub_reap.service e2scrub_all.timer fstrim.timer apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer' \
  "$suite" "$work/rootfs" >&2
cp "$work"/rootfs/boot/vmlinuz-* "$work/vmlinuz"
cp "$work"/rootfs/boot/initrd.img-* "$work/initrd.img"
mkfs.ext4 -q -F -L root -d "$work/rootfs" "$work/root.img" 2G >&2
mkdir "$work/out"
mv "$work/vmlinuz" "$work/initrd.img" "$work/root.img" "$work/out/"
mv "$work/out" "$dir"
echo "$dir"
