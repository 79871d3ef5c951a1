#!/bin/sh
# Build (or reuse) a minimal Debian 12 guest for the VM test: kernel, initrd and an ext4 root disk.
# usage: tests/e2e/guest-image.sh CACHE_DIR   -> prints the directory holding vmlinuz, initrd.img, root.img
# The image is cached under CACHE_DIR, keyed by this script's contents (which hold the package list).
set -eu
cache=${1:?usage: guest-image.sh CACHE_DIR}
packages=systemd,systemd-sysv,udev,dbus,cloud-init,linux-image-cloud-amd64,ifupdown,iproute2,netbase,ca-certificates,openssl,locales,openssh-server,sudo
key=$(sha256sum "$0" | cut -c1-16)
dir="$cache/guest-$key"
if [ -f "$dir/root.img" ]; then echo "$dir"; exit 0; fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# cloud-init without ifupdown leaves the NIC down on Debian; /dev/vda is the root disk qemu gives.
# A system locale, as Debian's cloud images have: without one cloud-init's locale module
# runs locale-gen, which on Debian ignores its argument, and reports an error.
mmdebstrap --quiet --variant=minbase --include="$packages" \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
  --customize-hook='rm -f "$1/etc/hostname"' \
  --customize-hook='echo LANG=C.UTF-8 > "$1/etc/default/locale"' \
  bookworm "$work/rootfs" >&2
cp "$work"/rootfs/boot/vmlinuz-* "$work/vmlinuz"
cp "$work"/rootfs/boot/initrd.img-* "$work/initrd.img"
mkfs.ext4 -q -F -L root -d "$work/rootfs" "$work/root.img" 2G >&2
mkdir "$work/out"
mv "$work/vmlinuz" "$work/initrd.img" "$work/root.img" "$work/out/"
mv "$work/out" "$dir"
echo "$dir"
