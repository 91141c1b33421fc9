#!/bin/bash
# mmdebstrap --customize-hook for the fastswitch test VM.
# Usage: customize.sh ROOTFS BINDIR
#   ROOTFS  the chroot mmdebstrap is building
#   BINDIR  host-compiled demo programs (build-image.sh: compile_demos)
# Installs the demo services, the boot marker and the test agent, masks units
# that only cost time under TCG, and makes sure the initramfs runs
# ostree-prepare-root.
set -euo pipefail
R=${1:?rootfs}
BIN=${2:?bindir}
HERE=$(cd "$(dirname "$0")" && pwd)

echo fastswitch-vm >"$R/etc/hostname"
passwd --root "$R" -d root >/dev/null # empty root password: throwaway test VM only
ln -sf /usr/lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"

# --- demo payload v1 ---------------------------------------------------------
install -d "$R/usr/lib/demo" "$R/usr/share/demo" "$R/usr/lib/test-agent"
install -m 0755 "$BIN/demo-hello" "$BIN/demo-lib" "$BIN/demo-reload" "$BIN/demo-other" "$R/usr/bin/"
install -m 0755 "$BIN/v1/libdemo.so" "$R/usr/lib/demo/libdemo.so"
echo v1 >"$R/usr/share/demo/hello.version"
echo 'd /run/demo 0755 root root -' >"$R/usr/lib/tmpfiles.d/demo.conf"
install -m 0755 "$BIN/test-agent" "$R/usr/lib/test-agent/agent"
install -m 0644 "$HERE"/units/*.service "$R/usr/lib/systemd/system/"
units=()
for f in "$HERE"/units/*.service; do units+=("$(basename "$f")"); done
systemctl --root="$R" enable "${units[@]}"

# --- boot-time trimming for TCG ------------------------------------------------
# Units that cost seconds under TCG and are useless in a throwaway test VM.
# kexec-load would load a kernel at every shutdown (the tests do kexec explicitly).
systemctl --root="$R" mask \
	e2scrub_reap.service e2scrub_all.timer kexec-load.service kexec.service \
	apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer \
	systemd-pstore.service

# --- initramfs: must contain the ostree dracut module --------------------------
# dracut ran from the kernel postinst; if ostree-boot was configured after the
# kernel, its dracut module is missing: regenerate then.
kver=$(ls "$R/usr/lib/modules")
has_prepare_root() {
	local list
	list=$(chroot "$R" lsinitrd "/boot/initrd.img-$kver")
	grep -q '/ostree-prepare-root$' <<<"$list"
}
if ! has_prepare_root; then
	echo "customize: initramfs lacks ostree-prepare-root, regenerating" >&2
	chroot "$R" dracut -f --kver "$kver" "/boot/initrd.img-$kver"
	has_prepare_root
fi
