#!/usr/bin/env bash
# Builds the bootable Debian 12 disk that molecule/kernel boots with QEMU: a debootstrap root
# file system (systemd, openssh-server, python3, linux-image-amd64) packed into a raw ext4 image,
# with the kernel and a small initrd beside it (QEMU boots them with -kernel/-initrd, so the disk
# needs no boot loader or partition table).
#
# The result is cached in $STACK_VM_CACHE (default /var/cache/stacklab-vm)/debian12-HASH, HASH
# being a hash of this script and the mirror: an edit here rebuilds, an unchanged script re-uses
# the disk. Older builds are removed. Prints the image directory (and nothing else) on stdout:
#   root.raw  vmlinuz  initrd.img
#
# Nothing on the disk is per VM. Each VM reads its settings from the kernel command line at every
# boot (stack-vm-seed below):
#   stack.hostname=NAME         host name
#   stack.ssh_ed25519=BASE64    the run's public key for root (key type ssh-ed25519)
#   stack.vmnet=ADDR/LEN[,...]  addresses on the NIC whose MAC starts 52:54:00:77
# The NIC whose MAC starts 52:54:00:12 is QEMU's user network (10.0.2.15, gateway 10.0.2.2).
# Boot with `root=/dev/vda rw console=ttyS0 net.ifnames=0 tsc=reliable`, a virtio-rng device
# (entropy for the SSH host key at first boot) and -nodefaults (no floppy, CD-ROM or VGA).
#
# Under emulation every module load and fork is expensive: the image loads only the drivers it
# needs, runs no timers, keeps its journal in memory and sets its addresses with a few `ip`
# commands before network.target (so Redis can bind them at boot).
set -euo pipefail
export LC_ALL=C.UTF-8
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${STACK_VM_CACHE:-/var/cache/stacklab-vm}
hash=$({ cat "$0"; echo "$mirror"; } | sha256sum | cut -c1-12)
image=$cache/debian12-$hash

log() { echo "build-vm-image: $*" >&2; }

if [ -f "$image/complete" ]; then
  echo "$image"
  exit 0
fi
mkdir -p "$cache"
# One build at a time; a second caller waits for the first and then re-uses its result.
exec 9>"$cache/.lock"
flock -w 1800 9
if [ -f "$image/complete" ]; then
  echo "$image"
  exit 0
fi

work=$(mktemp -d "$cache/.build.XXXXXX")
root=$work/rootfs
cleanup() {
  for mnt in "$root/proc" "$root/sys"; do
    if mountpoint -q "$mnt"; then umount -l "$mnt"; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
start=$SECONDS

# Runs a step quietly; shows the end of its output when it fails.
quiet() {
  local out=$work/step.log
  "$@" >"$out" 2>&1 || { tail -n 30 "$out" >&2; return 1; }
}

log "debootstrap bookworm from $mirror"
quiet debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,udev,kmod,initramfs-tools,zstd,iproute2,openssh-server,python3,python3-apt,procps,ca-certificates,less \
  bookworm "$root" "$mirror"

cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES

# A small initrd: only what mounts an ext4 root on virtio; everything else loads from the disk.
cat > "$root/etc/initramfs-tools/conf.d/stack-vm.conf" <<'CONF'
MODULES=list
COMPRESS=zstd
RESUME=none
CONF
printf '%s\n' virtio_pci virtio_blk virtio_net virtio_rng ext4 crc32c_generic >> "$root/etc/initramfs-tools/modules"

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
log "installing the kernel"
quiet chroot "$root" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends linux-image-amd64
# Package lists of every suite, so the first apt task in a VM starts from a recent state.
quiet chroot "$root" apt-get update -q
chroot "$root" apt-get clean
umount "$root/sys" "$root/proc"

# --- the system: root on /dev/vda, addresses from stack-vm-seed, SSH with a per-VM host key
echo "/dev/vda / ext4 rw,relatime,errors=remount-ro 0 0" > "$root/etc/fstab"
echo debian-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
# QEMU's user network answers DNS on 10.0.2.3 (it forwards to the controller's resolver).
rm -f "$root/etc/resolv.conf"
echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"
ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$root/etc/systemd/journald.conf.d/stack-vm.conf"

# Drivers for hardware a test VM does not use; udev would load each of them at boot.
printf 'blacklist %s\n' floppy parport parport_pc ppdev pcspkr i2c_piix4 kvm kvm_amd kvm_intel \
  ata_piix ata_generic sr_mod sg serio_raw evdev joydev qemu_fw_cfg drm bochs \
  > "$root/etc/modprobe.d/stack-vm.conf"
# Timers that would run apt or disk jobs in the middle of a test (and take the dpkg lock), and
# boot jobs a test VM has no use for.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
  systemd-binfmt.service proc-sys-fs-binfmt_misc.automount modprobe@drm.service \
  modprobe@efi_pstore.service modprobe@fuse.service modprobe@dm_mod.service modprobe@loop.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/ssh/sshd_config.d/stack-vm.conf" <<'SSHD'
# One host key, generated at first boot (RSA key generation is slow under emulation).
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
SSHD

cat > "$root/usr/local/sbin/stack-vm-seed" <<'SEED'
#!/bin/sh
# Applies this VM's settings from the kernel command line (see tools/build-vm-image.sh).
set -eu
hostname='' key='' vmnet=''
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    stack.hostname=*) hostname=${arg#*=} ;;
    stack.ssh_ed25519=*) key=${arg#*=} ;;
    stack.vmnet=*) vmnet=${arg#*=} ;;
  esac
done

if [ -n "$hostname" ]; then
  echo "$hostname" > /etc/hostname
  hostname "$hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$hostname" > /etc/hosts
fi
if [ -n "$key" ]; then
  install -d -m 0700 /root/.ssh
  echo "ssh-ed25519 $key stack-vm" > /root/.ssh/authorized_keys
  chmod 0600 /root/.ssh/authorized_keys
fi
[ -s /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key

# NICs are found by MAC prefix; udev may still be loading their driver, so wait (20 s at most).
nic() {
  for _ in $(seq 1 100); do
    for dev in /sys/class/net/*; do
      case "$(cat "$dev/address")" in "$1"*) basename "$dev"; return 0 ;; esac
    done
    sleep 0.2
  done
  echo "stack-vm-seed: no NIC with MAC $1*" >&2
  return 1
}
user_nic=$(nic 52:54:00:12:)
ip link set "$user_nic" up
ip address replace 10.0.2.15/24 dev "$user_nic"
ip route replace default via 10.0.2.2 dev "$user_nic"
if [ -n "$vmnet" ]; then
  vm_nic=$(nic 52:54:00:77:)
  ip link set "$vm_nic" up
  for address in $(echo "$vmnet" | tr ',' ' '); do
    ip address replace "$address" dev "$vm_nic"
  done
fi
SEED
chmod 0755 "$root/usr/local/sbin/stack-vm-seed"
cat > "$root/etc/systemd/system/stack-vm-seed.service" <<'UNIT'
[Unit]
Description=Per-VM settings from the kernel command line (host name, SSH key, addresses)
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=sysinit.target network-pre.target network.target ssh.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/stack-vm-seed

[Install]
WantedBy=sysinit.target
UNIT
mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
ln -sf ../stack-vm-seed.service "$root/etc/systemd/system/sysinit.target.wants/stack-vm-seed.service"

log "packing the disk image"
cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
mkfs.ext4 -q -L stackroot -d "$root" "$work/root.raw" 4G >&2
chmod 0444 "$work/root.raw"
rm -rf "$root" "$work/step.log"
touch "$work/complete"
rm -rf "$image"
mv "$work" "$image"
chmod 0755 "$image"
for old in "$cache"/debian12-*; do
  [ "$old" = "$image" ] || rm -rf "$old"
done
log "built $image in $((SECONDS - start)) s"
echo "$image"
