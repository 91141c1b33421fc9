#!/bin/bash
# Build (or reuse) a fastswitch test VM image: an ostree-booted Debian guest,
# plus test commits stored as refs in the image's ostree repo.
#
# Usage: vm/build-image.sh [--guest debian12|debian13]     (as root)
#   debian12 (default)  bookworm in a raw ext4 disk image of the whole sysroot;
#                       the test harness boots the BLS entry's kernel directly.
#   debian13            trixie on a GPT disk laid out like real hardware: p1 ESP
#                       (vfat, GRUB at EFI/BOOT/BOOTX64.EFI), p2 ext4 /boot, p3
#                       ext4 root (/ostree); booted by OVMF firmware + GRUB,
#                       which follows ostree's /boot/loader/grub.cfg.
# Prints the image directory on its last stdout line; all progress and the
# duration of each phase go to stderr. The directory holds:
#   disk.img    raw disk image (sparse, read-only: copy it)
#   image.json  guest, kernel version, kargs, the checksum of every ref and,
#               for debian13, the partition layout
#
# Cache: ${FASTSWITCH_VM_CACHE:-/var/tmp/fastswitch-vm}/<hash>, hash = sha256 of
# every file under vm/ except *.md (plus the guest name for debian13). A second
# run with the same inputs only prints the path. Builds happen in a temp dir
# renamed at the end, so an interrupted build never leaves a half cache.
# Env: FASTSWITCH_VM_MIRROR  Debian mirror URI (default http://deb.debian.org/debian);
#                            the base is built from the release's main suite only, so
#                            that its -security and -updates suites hold real updates
#      FASTSWITCH_VM_DISK_SIZE  disk image size (default 3G; debian12 only)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FASTSWITCH_VM_CACHE:-/var/tmp/fastswitch-vm}
GUEST=debian12
while [ $# -gt 0 ]; do
	case $1 in
	--guest)
		GUEST=${2:?--guest needs a value}
		shift 2
		;;
	--guest=*)
		GUEST=${1#--guest=}
		shift
		;;
	*)
		echo "usage: $0 [--guest debian12|debian13]" >&2
		exit 2
		;;
	esac
done
DISK_SIZE=${FASTSWITCH_VM_DISK_SIZE:-3G}
# Real, commonly deployed daemons from the Debian archive in the base (why: each is a
# service with its own binary mapping the libraries security updates touch: libssl, zlib,
# libgcrypt, gnutls, ...), plus needrestart, the peer tool the real-package scenarios ask.
REAL_DAEMONS=(openssh-server cron rsyslog chrony needrestart)
# What the real-install target adds to the base (issue: install a real package): a web
# server answering HTTP and a cache daemon that brings its own system user.
REAL_INSTALL=(nginx memcached)
OS=debian
case $GUEST in
debian12)
	SUITE=bookworm
	BASE_REF=debian/bookworm/x86_64
	KARGS=(root=/dev/vda rw "console=ttyS0,115200" quiet)
	PACKAGES=(systemd-sysv udev dbus ostree ostree-boot linux-image-cloud-amd64 dracut
		kexec-tools busybox procps e2fsprogs man-db bash-completion "${REAL_DAEMONS[@]}")
	;;
debian13)
	SUITE=trixie
	BASE_REF=debian/trixie/x86_64
	# Partition sizes (MiB) of the GPT disk.
	ESP_MB=64
	BOOT_MB=512
	ROOT_MB=4096
	PACKAGES=(systemd-sysv udev dbus login passwd ostree ostree-boot linux-image-amd64 dracut
		kexec-tools busybox procps e2fsprogs dosfstools util-linux grub-efi-amd64
		man-db bash-completion "${REAL_DAEMONS[@]}")
	;;
*)
	echo "unknown guest $GUEST (debian12 or debian13)" >&2
	exit 2
	;;
esac

log() { echo "[build-image] $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

now_ns() { date +%s%N; }
PHASE=
PHASE_T0=
phase() { # phase NAME: end the current phase (print its duration), start NAME
	local t
	t=$(now_ns)
	if [ -n "$PHASE" ]; then
		log "$(printf '%-22s %6.1f s' "$PHASE" "$(((t - PHASE_T0) / 1000000))e-3")"
	fi
	PHASE=$1
	PHASE_T0=$t
	[ -z "$PHASE" ] || log ">> $PHASE"
}

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap root mode, ostree admin deploy)"

# ---- inputs hash + cache lookup ---------------------------------------------
input_hash() {
	{
		(cd "$HERE" && find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z |
			xargs -0 sha256sum)
		# debian12 keeps the hash it always had; other guests add their name
		[ "$GUEST" = debian12 ] || echo "guest $GUEST"
	} | sha256sum | cut -c1-16
}
HASH=$(input_hash)
OUT="$CACHE/$HASH"
if [ -f "$OUT/image.json" ]; then
	touch "$OUT" # "recently used", for pruning
	log "cached image $OUT"
	echo "$OUT"
	exit 0
fi

T_ALL=$(now_ns)
phase "host packages"
# command -> Debian package providing it (CI starts from a fresh Debian 12)
declare -A NEED=(
	[mmdebstrap]=mmdebstrap [ostree]=ostree [mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs
	[zstd]=zstd [gcc]=gcc [cpio]=cpio [qemu-system-x86_64]=qemu-system-x86
	[flock]=util-linux [setpriv]=util-linux
)
if [ "$GUEST" = debian13 ]; then
	NEED+=([sgdisk]=gdisk [mkfs.fat]=dosfstools [mcopy]=mtools)
	[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || NEED+=([/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf)
fi
missing=()
for cmd in "${!NEED[@]}"; do
	command -v "$cmd" >/dev/null || [ -e "$cmd" ] || missing+=("${NEED[$cmd]}")
done
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	log "installing: ${missing[*]}"
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-remove "${missing[@]}" >&2
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
	log "waiting for another build-image.sh (lock $CACHE/.build.lock)"
	flock 9
fi
if [ -f "$OUT/image.json" ]; then # built by whoever held the lock
	phase ""
	log "cached image $OUT"
	echo "$OUT"
	exit 0
fi

# chattr -i: ostree marks deployment roots immutable; rm -rf fails without this
rm_tree() {
	local d
	for d in "$@"; do
		[ -e "$d" ] || continue
		if [ -d "$d/sysroot/ostree/deploy" ]; then
			find "$d/sysroot/ostree/deploy" -maxdepth 4 -type d -path '*/deploy/*' \
				-exec chattr -i {} + 2>/dev/null || true
		fi
		rm -rf "$d"
	done
}
# leftovers of interrupted builds (we hold the lock, so nobody is using them)
for d in "$CACHE"/.build-*; do rm_tree "$d"; done
W="$CACHE/.build-$HASH.$$"
trap 'rm_tree "$W"' EXIT
mkdir -p "$W"

# ---- demo programs -------------------------------------------------------------
# debian12: compiled on the host (the host glibc is the bookworm glibc).
# debian13: compiled inside the trixie rootfs by an mmdebstrap hook (gcc and
# libc6-dev installed there, then purged), so they link against trixie's glibc.
BIN="$W/bin"
if [ "$GUEST" = debian12 ]; then
	phase "compile demos"
	bash "$HERE/guest/compile-demos.sh" "$HERE/guest/src" "$BIN"
fi

# ---- rootfs ------------------------------------------------------------------
phase "rootfs (mmdebstrap)"
ROOTFS="$W/rootfs"
MIRROR_URI=${FASTSWITCH_VM_MIRROR:-http://deb.debian.org/debian}
mirror=("deb $MIRROR_URI $SUITE main")
includes=$(
	IFS=,
	echo "${PACKAGES[*]}"
)
# dracut's config must be in place before the kernel postinst runs dracut.
hooks=()
if [ "$GUEST" = debian13 ]; then
	# Compile the demos in the guest's own userland before customize.sh installs them.
	# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
	hooks+=(
		--customize-hook='chroot "$1" apt-get install -y -q --no-install-recommends gcc libc6-dev'
		--customize-hook="mkdir -p \"\$1/tmp/demo-src\" && cp -a '$HERE/guest/src/.' '$HERE/guest/compile-demos.sh' \"\$1/tmp/demo-src/\""
		--customize-hook='chroot "$1" bash /tmp/demo-src/compile-demos.sh /tmp/demo-src /tmp/demo-bin'
		--customize-hook="cp -a \"\$1/tmp/demo-bin\" '$BIN'"
		--customize-hook='chroot "$1" apt-get purge -y -q --autoremove gcc libc6-dev && chroot "$1" apt-get clean && rm -rf "$1/tmp/demo-src" "$1/tmp/demo-bin"'
	)
	# the host's (Debian 12) keyring holds the trixie keys
	hooks+=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
fi
# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
mmdebstrap --variant=minbase --include="$includes" \
	--aptopt='Acquire::Languages "none"' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--setup-hook='mkdir -p "$1/etc/dracut.conf.d"' \
	--setup-hook="cp '$HERE/guest/dracut-vm.conf' \"\$1/etc/dracut.conf.d/10-vm.conf\"" \
	--essential-hook='echo "kexec-tools kexec-tools/load_kexec boolean false" | chroot "$1" debconf-set-selections' \
	"${hooks[@]}" \
	--customize-hook="'$HERE/guest/customize.sh' \"\$1\" '$BIN'" \
	--customize-hook='sed -i "\\|^path-exclude=/usr/share/man/|d" "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"' \
	"$SUITE" "$ROOTFS" "${mirror[@]}" </dev/null >&2

# ---- rootfs -> ostree-shaped tree ----------------------------------------------
# ---- real-package targets: apt in a chroot of the base rootfs, as an image build does
# test/real-install   the base plus `apt-get install ${REAL_INSTALL[*]}` (main suite)
# test/real-security  the base after `apt-get upgrade` with the release's -security and
#                     -updates suites (whatever they hold on the day of the build)
phase "real-package trees"
in_chroot() { # in_chroot DIR CMD...: /proc, /sys, /dev and the host's DNS; never start services
	local d=$1
	shift
	printf '#!/bin/sh\nexit 101\n' >"$d/usr/sbin/policy-rc.d"
	chmod 0755 "$d/usr/sbin/policy-rc.d"
	unshare -m --propagation private sh -ec '
		d=$1; shift
		mount -t proc proc "$d/proc"
		mount --rbind /sys "$d/sys"
		mount --rbind /dev "$d/dev"
		rm -f "$d/etc/resolv.conf.fastswitch-build"
		[ ! -e "$d/etc/resolv.conf" ] && [ ! -L "$d/etc/resolv.conf" ] || mv "$d/etc/resolv.conf" "$d/etc/resolv.conf.fastswitch-build"
		cp /etc/resolv.conf "$d/etc/resolv.conf"
		rc=0
		chroot "$d" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
			NEEDRESTART_SUSPEND=1 "$@" || rc=$?
		rm -f "$d/etc/resolv.conf"
		[ ! -e "$d/etc/resolv.conf.fastswitch-build" ] && [ ! -L "$d/etc/resolv.conf.fastswitch-build" ] ||
			mv "$d/etc/resolv.conf.fastswitch-build" "$d/etc/resolv.conf"
		exit $rc
	' sh "$d" "$@"
	rm -f "$d/usr/sbin/policy-rc.d"
}
pkg_versions() { # pkg_versions DIR: "package version" lines of what dpkg has installed
	chroot "$1" dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' |
		awk '$1 == "ii" {print $2, $3}' | LC_ALL=C sort
}
APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
REAL_INSTALL_TREE="$W/real-install"
cp -a "$ROOTFS" "$REAL_INSTALL_TREE"
in_chroot "$REAL_INSTALL_TREE" apt-get -q update >&2 # mmdebstrap leaves no package lists
in_chroot "$REAL_INSTALL_TREE" apt-get "${APT_OPTS[@]}" --no-install-recommends install "${REAL_INSTALL[@]}" >&2
in_chroot "$REAL_INSTALL_TREE" apt-get clean
REAL_SECURITY_TREE="$W/real-security"
cp -a "$ROOTFS" "$REAL_SECURITY_TREE"
extra_list="$REAL_SECURITY_TREE/etc/apt/sources.list.d/fastswitch-build-updates.list"
{
	echo "deb http://deb.debian.org/debian-security $SUITE-security main"
	echo "deb $MIRROR_URI $SUITE-updates main"
} >"$extra_list"
in_chroot "$REAL_SECURITY_TREE" apt-get -q update >&2
in_chroot "$REAL_SECURITY_TREE" apt-get "${APT_OPTS[@]}" upgrade >&2
in_chroot "$REAL_SECURITY_TREE" apt-get clean
rm -f "$extra_list"
rm -rf "$REAL_SECURITY_TREE"/var/lib/apt/lists/* "$REAL_INSTALL_TREE"/var/lib/apt/lists/*
# "package old new" for every package the update changed (upgrade never adds or removes)
LC_ALL=C join <(pkg_versions "$ROOTFS") <(pkg_versions "$REAL_SECURITY_TREE") |
	awk '$2 != $3' >"$W/real-security.changes"
LC_ALL=C join -v 2 <(pkg_versions "$ROOTFS") <(pkg_versions "$REAL_INSTALL_TREE") \
	>"$W/real-install.added"
log "real-security: $(wc -l <"$W/real-security.changes") package(s) updated; real-install: $(wc -l <"$W/real-install.added") package(s) added"

# ---- rootfs -> ostree-shaped tree ----------------------------------------------
phase "ostree tree"
if [ "$GUEST" = debian12 ]; then
	TREE=$ROOTFS # reshaped in place
else
	# debian13 needs the rootfs afterwards (its ostree writes the first GRUB
	# menu, its grub-mkimage the EFI image): reshape a copy.
	TREE="$W/tree"
	cp -a "$ROOTFS" "$TREE"
fi
KVER=$(ls "$TREE/usr/lib/modules")
[ "$(wc -w <<<"$KVER")" = 1 ] || die "expected one kernel, got: $KVER"
MODDIR="$TREE/usr/lib/modules/$KVER"
if [ "$GUEST" = debian13 ]; then
	# Filesystem ids fixed up front (derived from the input hash), so fstab, the
	# kargs and GRUB's search can be written before the filesystems exist.
	uuid_of() { # uuid_of SALT
		printf '%s' "$HASH-$1" | sha256sum |
			sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/'
	}
	BOOT_UUID=$(uuid_of boot)
	ROOT_UUID=$(uuid_of root)
	ESP_ID=$(printf '%s' "$HASH-esp" | sha256sum | cut -c1-8 | tr a-f A-F)
	ESP_UUID="${ESP_ID:0:4}-${ESP_ID:4:4}"
	KARGS=("root=UUID=$ROOT_UUID" rw "console=ttyS0,115200" quiet)
fi
# The tree's /var starts empty on the host (it belongs to the stateroot). As rpm-ostree does
# for packages' /var content, its directories and symlinks become tmpfiles.d lines, so a
# daemon finds /var/lib/<name>, /var/log/<name>, /var/spool/... with the owner and mode
# its package gave them. Names come from the tree's own user and group databases.
var_tmpfiles() { # var_tmpfiles TREE > conf
	local t=$1 path kind mode uid gid
	declare -A user group
	while IFS=: read -r name _ id _; do user[$id]=$name; done <"$t/etc/passwd"
	while IFS=: read -r name _ id _; do group[$id]=$name; done <"$t/etc/group"
	echo "# Generated by the image build from the tree's /var (as rpm-ostree's autovar)"
	while IFS= read -r -d '' path; do
		IFS='|' read -r kind mode uid gid < <(stat -c '%F|%a|%u|%g' "$t/$path")
		if [ "$kind" = directory ]; then
			printf 'd /%s 0%s %s %s -\n' "$path" "$mode" "${user[$uid]:-$uid}" "${group[$gid]:-$gid}"
		else
			printf 'L /%s - - - - %s\n' "$path" "$(readlink "$t/$path")"
		fi
	done < <(cd "$t" && find var -mindepth 1 \( -path var/lib/dpkg -o -path var/lib/apt/lists \
		-o -path var/cache/apt -o -path var/log/apt \) -prune -o \( -type d -o -type l \) -print0 |
		LC_ALL=C sort -z)
}
reshape() { # reshape TREE: a Debian rootfs -> the ostree layout, in place
	local TREE=$1 moddir="$1/usr/lib/modules/$KVER"
	[ "$(ls "$TREE/usr/lib/modules")" = "$KVER" ] || die "$TREE: expected the kernel $KVER only"
	mv "$TREE/boot/vmlinuz-$KVER" "$moddir/vmlinuz"
	mv "$TREE/boot/initrd.img-$KVER" "$moddir/initramfs.img"
	rm -rf "${TREE:?}"/boot/* "${TREE:?}"/vmlinuz* "${TREE:?}"/initrd.img*
	var_tmpfiles "$TREE" >"$TREE/usr/lib/tmpfiles.d/ostree-image-var.conf"
	mv "$TREE/etc" "$TREE/usr/etc"
	: >"$TREE/usr/etc/fstab"
	if [ "$GUEST" = debian13 ]; then
		mkdir -p "$TREE/boot/efi"
		# fsck pass 0: systemd-fsck of /boot costs ~17 s per boot under TCG.
		cat >"$TREE/usr/etc/fstab" <<-EOF
			UUID=$BOOT_UUID  /boot      ext4  defaults           0 0
			UUID=$ESP_UUID   /boot/efi  vfat  umask=0077,nofail  0 0
		EOF
		# Only read by grub-mkconfig (ostree runs it on every new bootversion).
		cat >"$TREE/usr/etc/default/grub" <<-'EOF'
			GRUB_DEFAULT=0
			GRUB_TIMEOUT=1
			GRUB_DISTRIBUTOR=Debian
			GRUB_CMDLINE_LINUX_DEFAULT=""
			GRUB_CMDLINE_LINUX=""
			GRUB_TERMINAL="serial console"
			GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
			GRUB_DISABLE_OS_PROBER=true
		EOF
	fi
	# Fixed machine-id (mmdebstrap empties it): otherwise every fresh copy of the
	# image is a systemd "first boot", which is slower. Derived from the input hash.
	printf '%s\n' "$(printf '%s' "$HASH" | sha256sum | cut -c1-32)" >"$TREE/usr/etc/machine-id"
	# /var belongs to the stateroot and starts empty; keep the dpkg db under /usr.
	mkdir -p "$TREE/usr/share/dpkg"
	mv "$TREE/var/lib/dpkg" "$TREE/usr/share/dpkg/database"
	rm -rf "${TREE:?}/var" "${TREE:?}"/{home,root,opt,srv,mnt,media,tmp,dev,proc,sys,run}
	mkdir "$TREE"/{var,dev,proc,sys,run,sysroot}
	mkdir -m 1777 "$TREE/tmp"
	ln -s var/home "$TREE/home"
	ln -s var/roothome "$TREE/root"
	ln -s var/opt "$TREE/opt"
	ln -s var/srv "$TREE/srv"
	ln -s var/mnt "$TREE/mnt"
	ln -s run/media "$TREE/media"
	ln -s sysroot/ostree "$TREE/ostree"
	cat >"$TREE/usr/lib/tmpfiles.d/ostree-layout.conf" <<-'EOF'
		d /var/home 0755 root root -
		d /var/roothome 0700 root root -
		d /var/opt 0755 root root -
		d /var/srv 0755 root root -
		d /var/mnt 0755 root root -
		d /var/local 0755 root root -
	EOF
}
reshape "$TREE"
reshape "$REAL_INSTALL_TREE"
reshape "$REAL_SECURITY_TREE"

phase "ostree commit+deploy"
SYSROOT="$W/sysroot"
REPO="$SYSROOT/ostree/repo"
mkdir -p "$SYSROOT"
ostree admin init-fs --modern "$SYSROOT" >&2
ostree admin os-init --sysroot="$SYSROOT" "$OS" >&2
ostree --repo="$REPO" config set sysroot.bootloader none
# Any commit modifier (--no-xattrs, --owner-uid, ...) makes `--tree=ref=BASE`
# re-checksum the whole base tree (~10 s instead of 0.2 s): use them only for
# the base commit. --consume moves the files into the repo (faster, and no
# tree left to delete), so keep copies of what the test commits reuse.
SAVED="$W/saved"
mkdir -p "$SAVED"
cp "$TREE/usr/bin/dbus-daemon" "$MODDIR/initramfs.img" "$SAVED/"
commit() { # commit REF SUBJECT ARGS...
	local ref=$1 subject=$2 t
	shift 2
	t=$(now_ns)
	ostree --repo="$REPO" commit --branch="$ref" --subject="$subject" --fsync=false "$@" >/dev/null
	log "$(printf '  commit %-24s %5.1f s' "$ref" "$((($(now_ns) - t) / 1000000))e-3")"
}
commit "$BASE_REF" "fastswitch test VM base" --no-xattrs --consume --tree=dir="$TREE"
deploy_kargs=()
for k in "${KARGS[@]}"; do deploy_kargs+=("--karg=$k"); done
ostree admin deploy --sysroot="$SYSROOT" --os="$OS" "${deploy_kargs[@]}" "$BASE_REF" >&2
if [ "$GUEST" = debian13 ]; then
	# From now on the guest's ostree regenerates the GRUB menu (grub-mkconfig
	# with 15_ostree) whenever the bootversion changes. Debian's /boot/grub
	# layout is not auto-detected, so say it.
	ostree --repo="$REPO" config set sysroot.bootloader grub2
fi

# ---- test commits: base ref + overlay dir (in the TCG guest a commit takes ~1 min)
phase "test commits"
OV="$W/overlays"
unitdir=usr/lib/systemd/system
overlay() { # overlay NAME: fresh overlay dir, path on stdout
	rm -rf "${OV:?}/$1"
	mkdir -p "$OV/$1"
	echo "$OV/$1"
}
# test/layered: a "layered package": binary, vendor-enabled unit, default
# config in /usr/etc, a system user (sysusers.d) and dirs (tmpfiles.d).
o=$(overlay layered)
mkdir -p "$o/usr/bin" "$o/$unitdir/multi-user.target.wants" "$o/usr/etc/demo" \
	"$o/usr/lib/sysusers.d" "$o/usr/lib/tmpfiles.d"
install -m 0755 "$BIN/demo-extra" "$o/usr/bin/demo-extra"
cat >"$o/$unitdir/demo-extra.service" <<'EOF'
[Unit]
Description=fastswitch demo: layered package service

[Service]
User=demo-extra
Group=demo-extra
WorkingDirectory=/var/lib/demo-extra
ExecStart=/usr/bin/demo-extra /run/demo-extra /etc/demo/extra.conf

[Install]
WantedBy=multi-user.target
EOF
ln -s ../demo-extra.service "$o/$unitdir/multi-user.target.wants/demo-extra.service"
echo "greeting=hello-from-layered" >"$o/usr/etc/demo/extra.conf"
echo 'u demo-extra - "fastswitch demo layered service" /var/lib/demo-extra' \
	>"$o/usr/lib/sysusers.d/demo-extra.conf"
cat >"$o/usr/lib/tmpfiles.d/demo-extra.conf" <<'EOF'
d /run/demo-extra 0755 demo-extra demo-extra -
d /var/lib/demo-extra 0750 demo-extra demo-extra -
EOF
commit test/layered "layered package demo-extra" --tree=ref="$BASE_REF" --tree=dir="$o"

# test/hello-v2: only demo-hello's binary changed.
o=$(overlay hello-v2)
install -D -m 0755 "$BIN/v2/demo-hello" "$o/usr/bin/demo-hello"
commit test/hello-v2 "demo-hello v2 (binary only)" --tree=ref="$BASE_REF" --tree=dir="$o"

# test/lib-v2: only libdemo.so changed.
o=$(overlay lib-v2)
install -D -m 0755 "$BIN/v2/libdemo.so" "$o/usr/lib/demo/libdemo.so"
commit test/lib-v2 "libdemo.so v2 (library only)" --tree=ref="$BASE_REF" --tree=dir="$o"

# test/reload-only: only the ExecReload= line of demo-reload.service changed.
o=$(overlay reload-only)
mkdir -p "$o/$unitdir"
sed 's/echo v1 >/echo v2 >/' "$HERE/guest/units/demo-reload.service" >"$o/$unitdir/demo-reload.service"
diff_lines=$(diff "$HERE/guest/units/demo-reload.service" "$o/$unitdir/demo-reload.service" |
	grep -c '^[<>]' || true)
if [ "$diff_lines" != 2 ] || ! grep -q '^ExecReload=.*echo v2' "$o/$unitdir/demo-reload.service"; then
	die "reload-only overlay must change exactly the ExecReload= line"
fi
commit test/reload-only "demo-reload: ExecReload= changed" --tree=ref="$BASE_REF" --tree=dir="$o"

# test/dbus-changed: the dbus daemon binary is a different object (same ELF
# plus trailing bytes, which the loader ignores), so it still works.
o=$(overlay dbus-changed)
install -D -m 0755 "$SAVED/dbus-daemon" "$o/usr/bin/dbus-daemon"
printf '\0fastswitch test: dbus-daemon changed\n' >>"$o/usr/bin/dbus-daemon"
commit test/dbus-changed "dbus-daemon changed" --tree=ref="$BASE_REF" --tree=dir="$o"

# test/kernel: new initramfs (padded to 512 bytes + an extra cpio) -> new boot
# checksum. Without the padding the kernel fails with "invalid magic".
o=$(overlay kernel)
mkdir -p "$o/usr/lib/modules/$KVER" "$W/icpio/etc"
cp "$SAVED/initramfs.img" "$o/usr/lib/modules/$KVER/initramfs.img"
truncate -s %512 "$o/usr/lib/modules/$KVER/initramfs.img"
echo "fastswitch test/kernel initramfs" >"$W/icpio/etc/fastswitch-initrd-marker"
(cd "$W/icpio" && echo etc/fastswitch-initrd-marker | cpio -o -H newc --quiet) \
	>>"$o/usr/lib/modules/$KVER/initramfs.img"
commit test/kernel "new initramfs" --tree=ref="$BASE_REF" --tree=dir="$o"

# The real-package targets: whole trees (apt changed files all over /usr), committed the
# way the base was.
commit test/real-install "base + apt-get install ${REAL_INSTALL[*]}" --no-xattrs --consume \
	--tree=dir="$REAL_INSTALL_TREE"
commit test/real-security "base + apt-get upgrade from $SUITE-security and $SUITE-updates" \
	--no-xattrs --consume --tree=dir="$REAL_SECURITY_TREE"

# ---- debian13: GRUB menu + EFI image ---------------------------------------------
if [ "$GUEST" = debian13 ]; then
	phase "grub"
	B="$SYSROOT/boot"
	mkdir -p "$B/grub" "$B/grub2" "$B/efi"
	cp -r "$ROOTFS/usr/lib/grub/x86_64-efi" "$B/grub/" # for runtime insmod
	bv=$(readlink "$B/loader")
	bv=${bv#loader.}
	# The first menu is what /etc/grub.d/15_ostree emits, made by the guest's
	# own ostree (the host's is older) against this sysroot; it needs /proc.
	prep="insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root $BOOT_UUID"
	cat >"$W/early.cfg" <<-EOF
		search --no-floppy --fs-uuid --set=root $BOOT_UUID
		set prefix=(\$root)/grub
		configfile (\$root)/loader/grub.cfg
	EOF
	cp "$W/early.cfg" "$ROOTFS/tmp/early.cfg"
	mkdir -p "$ROOTFS/mnt/sysroot"
	{
		cat <<-'EOF'
			serial --unit=0 --speed=115200
			terminal_input serial console
			terminal_output serial console
			set timeout=1
			set default=0
			function load_video { insmod all_video; }
		EOF
		# private mount namespace: the mounts vanish with the process
		unshare -m --propagation private sh -ec '
			mount --bind "$2" "$1/mnt/sysroot"
			mount -t proc proc "$1/proc"
			chroot "$1" env GRUB2_BOOT_DEVICE_ID="$3" GRUB2_PREPARE_ROOT_CACHE="$4" \
				_OSTREE_GRUB2_IS_EFI=1 ostree admin instutil grub2-generate --sysroot=/mnt/sysroot "$5"
		' sh "$ROOTFS" "$SYSROOT" "$BOOT_UUID" "$prep" "$bv"
	} >"$B/loader.$bv/grub.cfg"
	grep -q '^menuentry' "$B/loader.$bv/grub.cfg" || die "no menuentry in loader.$bv/grub.cfg"
	ln -sfn ../loader/grub.cfg "$B/grub2/grub.cfg" # ostree's grub2 layout
	# Standalone EFI image (not grub-install, which probes the build host's
	# disks); its embedded config follows ostree's atomically swapped loader link.
	chroot "$ROOTFS" grub-mkimage -O x86_64-efi -o /tmp/BOOTX64.EFI -p /grub -c /tmp/early.cfg \
		part_gpt part_msdos fat ext2 normal bli efifwsetup configfile search search_fs_uuid \
		search_label linux echo serial terminal test ls cat all_video efi_gop gzio loadenv \
		regexp sleep reboot halt minicmd true probe gettext font gfxterm
	mv "$ROOTFS/tmp/BOOTX64.EFI" "$W/BOOTX64.EFI"
fi

# ---- disk image + manifest --------------------------------------------------------
IMG="$W/image"
mkdir -p "$IMG"
extra_json=
if [ "$GUEST" = debian12 ]; then
	phase "mkfs.ext4"
	mkfs.ext4 -q -L ostree-root -m 0 -E lazy_itable_init=0,lazy_journal_init=0 \
		-d "$SYSROOT" "$IMG/disk.img" "$DISK_SIZE" >&2
else
	# Partitions are built as files and dd'ed into a GPT image: no loop device, no mount.
	phase "partitions"
	P="$W/parts"
	mkdir -p "$P"
	mkfs.fat -F 16 -n ESP -i "$ESP_ID" -C "$P/esp.img" $((ESP_MB * 1024)) >/dev/null
	mmd -i "$P/esp.img" ::/EFI ::/EFI/BOOT
	mcopy -i "$P/esp.img" "$W/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
	mkfs.ext4 -q -L boot -U "$BOOT_UUID" -m 0 -E lazy_itable_init=0,lazy_journal_init=0 \
		-d "$SYSROOT/boot" "$P/boot.img" "${BOOT_MB}M" >&2
	# the root partition holds only the /boot mount point
	mv "$SYSROOT/boot" "$W/boot.part"
	mkdir "$SYSROOT/boot"
	mkfs.ext4 -q -L ostree-root -U "$ROOT_UUID" -m 0 -E lazy_itable_init=0,lazy_journal_init=0 \
		-d "$SYSROOT" "$P/root.img" "${ROOT_MB}M" >&2
	rmdir "$SYSROOT/boot"
	mv "$W/boot.part" "$SYSROOT/boot"
	D="$IMG/disk.img"
	truncate -s $((1 + ESP_MB + BOOT_MB + ROOT_MB + 1))M "$D"
	# type codes: ESP, XBOOTLDR, Linux x86-64 root
	sgdisk -n 1:1M:+${ESP_MB}M -t 1:ef00 -c 1:ESP \
		-n 2:0:+${BOOT_MB}M -t 2:ea00 -c 2:boot \
		-n 3:0:+${ROOT_MB}M -t 3:8304 -c 3:root "$D" >/dev/null
	parts=()
	i=0
	for p in esp:vfat:"$ESP_UUID":/boot/efi boot:ext4:"$BOOT_UUID":/boot root:ext4:"$ROOT_UUID":/sysroot; do
		i=$((i + 1))
		IFS=: read -r name fs uuid mnt <<<"$p"
		start=$(sgdisk -i "$i" "$D" | awk '/^First sector/{print $3}')
		end=$(sgdisk -i "$i" "$D" | awk '/^Last sector/{print $3}')
		dd if="$P/$name.img" of="$D" bs=512 seek="$start" conv=notrunc,sparse status=none
		parts+=("$(printf '    {"number": %d, "name": "%s", "device": "/dev/vda%d", "fs": "%s", "uuid": "%s", "mount": "%s", "offset": %d, "size": %d}' \
			"$i" "$name" "$i" "$fs" "$uuid" "$mnt" $((start * 512)) $(((end - start + 1) * 512)))")
	done
	rm -rf "$P"
	extra_json=$(
		printf '  "firmware": "ovmf",\n  "bootloader": "grub",\n  "partitions": [\n'
		(
			IFS=$'\n'
			echo "${parts[*]}"
		) | sed '$!s/$/,/'
		printf '  ],\n'
	)
fi
{
	printf '{\n  "hash": "%s",\n  "guest": "%s",\n  "os": "%s",\n  "base_ref": "%s",\n' \
		"$HASH" "$GUEST" "$OS" "$BASE_REF"
	[ -z "$extra_json" ] || printf '%s\n' "$extra_json"
	printf '  "kernel_version": "%s",\n  "disk": "disk.img",\n' "$KVER"
	printf '  "kargs": [%s],\n' "$(printf '"%s",' "${KARGS[@]}" | sed 's/,$//')"
	printf '  "refs": {\n'
	first=1
	while read -r ref; do
		[ $first = 1 ] || printf ',\n'
		first=0
		printf '    "%s": "%s"' "$ref" "$(ostree --repo="$REPO" rev-parse "$ref")"
	done < <(ostree --repo="$REPO" refs | grep -v "^ostree/" | LC_ALL=C sort)
	printf '\n  },\n'
	# what the real-package targets changed, as "package old new" / "package version"
	json_lines() { sed 's/\\/\\\\/g; s/"/\\"/g; s/.*/    "&"/' "$1" | sed '$!s/$/,/'; }
	printf '  "real_security_changes": [\n%s\n  ],\n' "$(json_lines "$W/real-security.changes")"
	printf '  "real_install_added": [\n%s\n  ],\n' "$(json_lines "$W/real-install.added")"
	printf '  "booted_checksum": "%s"\n}\n' "$(ostree --repo="$REPO" rev-parse "$BASE_REF")"
} >"$IMG/image.json"
chmod 0444 "$IMG/disk.img"

phase "publish"
rm_tree "$OUT" # not a valid cache entry (no image.json), e.g. left by hand
mv -T "$IMG" "$OUT"
# Prune old images (each ~0.5 GB, plus a saved guest made by the harness):
# keep the 3 newest, and anything used in the last hour.
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9a-f]\{16\}' -printf '%T@ %p\n' |
	sort -rn | tail -n +4 | cut -d' ' -f2- | while read -r old; do
	if [ -z "$(find "$old" -maxdepth 0 -mmin -60)" ]; then
		log "pruning old image $old"
		rm -rf "$old"
	fi
done
phase ""
log "$(printf 'total %.1f s; disk.img %s apparent, %s allocated' \
	"$((($(now_ns) - T_ALL) / 1000000))e-3" \
	"$(du -h --apparent-size "$OUT/disk.img" | cut -f1)" "$(du -h "$OUT/disk.img" | cut -f1)")"
echo "$OUT"
