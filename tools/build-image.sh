#!/usr/bin/env bash
# Builds a lab/Molecule host image once: a debootstrap Debian with systemd as PID 1, an SSH
# server (Ansible pipelines over SSH; the Podman connection cannot) and the controller's CA
# bundle (HTTPS leaves through an intercepting proxy). The tag carries a hash of this script and
# the suite, so an edit here rebuilds and an unchanged script re-uses the image.
#   tools/build-image.sh [bookworm|trixie]    (or 12|13; default bookworm, the lab's)
# Debian 13 is where the redis role's flavor "auto" picks Valkey (the default scenario).
set -euo pipefail
requested=${1:-${LAB_IMAGE_SUITE:-bookworm}}
case "$requested" in
  bookworm | 12) suite=bookworm version=12 ;;
  trixie | 13) suite=trixie version=13 ;;
  *)
    echo "build-image: unknown suite '$requested' (bookworm, trixie)" >&2
    exit 2
    ;;
esac
name=${LAB_IMAGE_NAME:-localhost/stacklab-debian$version}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=$({ cat "$0"; echo "$suite"; } | sha256sum | cut -c1-12)

# `make test` starts the builds in the background while the linters run; a second caller of the
# same suite waits for it and then finds the image. Suites build side by side.
exec 9>"/var/tmp/stacklab-image-$suite.lock"
flock -w 1800 9
if podman image exists "$name:$tag"; then
  podman tag "$name:$tag" "$name:latest"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/stacklab-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,sudo,ca-certificates,procps,openssh-server \
  "$suite" "$rootfs" "$mirror" >/dev/null
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
SOURCES
# The root filesystem of a container is already mounted as it should be.
ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-remount-fs.service"
# Root logs in with the lab's key only (mounted at /root/.ssh/authorized_keys when a host is
# created). Host keys are made per container at first start, never shared through the image.
rm -f "$rootfs"/etc/ssh/ssh_host_*
mkdir -p "$rootfs/etc/systemd/system/ssh.service.d" "$rootfs/root/.ssh"
chmod 0700 "$rootfs/root/.ssh"
cat > "$rootfs/etc/systemd/system/ssh.service.d/lab.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
cat > "$rootfs/etc/ssh/sshd_config.d/lab.conf" <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
# Ansible's ControlPersist and the tests open many sessions on one connection.
MaxSessions 64
MaxStartups 64:30:128
SSHD
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/ca-certificates/controller-bundle.crt"
chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
chroot "$rootfs" apt-get clean
tar -C "$rootfs" -c . | podman import --change 'CMD ["/sbin/init"]' - "$name:$tag" >/dev/null
podman tag "$name:$tag" "$name:latest"
echo "built $name:$tag"
