#!/usr/bin/env bash
# Builds the lab/Molecule host image once: a debootstrap Debian 12 with systemd as PID 1 and
# the controller's CA bundle (HTTPS leaves through an intercepting proxy). The tag carries a
# hash of this script, so an edit here rebuilds and an unchanged script re-uses the image.
set -euo pipefail
name=${LAB_IMAGE_NAME:-localhost/stacklab-debian12}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=$(sha256sum "$0" | cut -c1-12)

if podman image exists "$name:$tag"; then
  podman tag "$name:$tag" "$name:latest"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/stacklab-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,sudo,ca-certificates,procps \
  bookworm "$rootfs" "$mirror" >/dev/null
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
# The root filesystem of a container is already mounted as it should be.
ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-remount-fs.service"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/ca-certificates/controller-bundle.crt"
chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
chroot "$rootfs" apt-get clean
tar -C "$rootfs" -c . | podman import --change 'CMD ["/sbin/init"]' - "$name:$tag" >/dev/null
podman tag "$name:$tag" "$name:latest"
echo "built $name:$tag"
