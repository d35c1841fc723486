#!/bin/sh
# A stand-in for the Dockerfile's base image (python:3.11-slim-bookworm), for machines that
# reach Debian's mirror and PyPI but no container registry: a minimal Debian bookworm with
# Debian's python3 and pip, laid out where the official image has them, written as a tarball
# for `podman import`. tests/test_image.py makes it once and keeps it under var/.
#
# usage: tests/image_base.sh OUT.tar     (as root; needs debootstrap; takes a minute or two)
set -eu

out=$1
# The mirror this machine's apt uses, so that debootstrap reaches what apt-get reaches.
mirror=$(grep -h -o -E '^(deb|URIs:)[[:space:]]+https?://[^[:space:]]+' \
	/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
	| awk '{print $2}' | grep -v -e '-security' | grep -E '/debian/?$' | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d "$out.rootfs.XXXXXX")
cleanup() {
	# debootstrap mounts /proc and /sys in the target; one it could not unmount (killed) must
	# not lead rm into the host's.
	awk -v root="$rootfs/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r \
		| while read -r mount; do umount -l "$mount"; done
	rm -rf --one-file-system "$rootfs" "$rootfs.log" "$out.part"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

debootstrap --variant=minbase --include=python3,python3-pip bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
	|| { echo "debootstrap from $mirror failed:" >&2; tail -n 20 "$rootfs.log" >&2; exit 1; }

# What the official image has: python and pip in /usr/local/bin, and a pip that installs
# into the system's Python (no PEP 668 marker; pip then writes to /usr/local).
ln -s /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -s /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED

# This machine's CA certificates and machine-wide pip configuration, so that the build's
# pip reaches the package index the way the host's does (tests/test_image.py passes on
# PIP_INDEX_URL and its kin from the environment).
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$rootfs/etc/pip.conf"; fi
if [ -d /etc/xdg/pip ]; then mkdir -p "$rootfs/etc/xdg" && cp -r /etc/xdg/pip "$rootfs/etc/xdg/pip"; fi

# Slim, as the official image is: no package cache, lists, documentation or translations.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
	"$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

tar --numeric-owner -C "$rootfs" -cf "$out.part" .
mv "$out.part" "$out"
