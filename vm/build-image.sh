#!/bin/bash
# Build (or reuse) the fastswitch test VM image: an ostree-booted Debian
# bookworm in a raw ext4 disk image, plus test commits stored as refs in the
# image's ostree repo.
#
# Usage: vm/build-image.sh            (as root)
# Prints the image directory on its last stdout line; all progress and the
# duration of each phase go to stderr. The directory holds:
#   disk.img    raw ext4 image of the ostree sysroot (sparse, read-only: copy it)
#   image.json  kernel version, kargs and the checksum of every ref
#
# Cache: ${FASTSWITCH_VM_CACHE:-/var/tmp/fastswitch-vm}/<hash>, hash = sha256 of
# every file under vm/ except *.md. A second run with the same inputs only
# prints the path. Builds happen in a temp dir renamed at the end, so an
# interrupted build never leaves a half cache.
# Env: FASTSWITCH_VM_MIRROR  Debian mirror for mmdebstrap (default: its own,
#                            deb.debian.org with updates + security)
#      FASTSWITCH_VM_DISK_SIZE  disk image size (default 3G)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FASTSWITCH_VM_CACHE:-/var/tmp/fastswitch-vm}
DISK_SIZE=${FASTSWITCH_VM_DISK_SIZE:-3G}
OS=debian
BASE_REF=debian/bookworm/x86_64
KARGS=(root=/dev/vda rw "console=ttyS0,115200" quiet)
PACKAGES=(systemd-sysv udev dbus ostree ostree-boot linux-image-cloud-amd64 dracut
	kexec-tools busybox procps e2fsprogs)

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
	(cd "$HERE" && find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z |
		xargs -0 sha256sum) | sha256sum | cut -c1-16
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
missing=()
for cmd in "${!NEED[@]}"; do
	command -v "$cmd" >/dev/null || missing+=("${NEED[$cmd]}")
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

# ---- demo programs, compiled on the host (same glibc as the bookworm guest) ---
phase "compile demos"
SRC="$HERE/guest/src"
BIN="$W/bin"
mkdir -p "$BIN/v1" "$BIN/v2"
cc_demo() { # cc_demo OUT NAME VERSION [extra gcc args...]
	local out=$1 name=$2 version=$3
	shift 3
	gcc -O2 -Wall -Wextra -Werror -o "$out" -DNAME="\"$name\"" -DVERSION="\"$version\"" \
		"$SRC/demo-service.c" "$@"
}
for v in v1 v2; do
	gcc -O2 -Wall -Wextra -Werror -shared -fPIC -Wl,-soname,libdemo.so -DLIBVERSION="\"$v\"" \
		-o "$BIN/$v/libdemo.so" "$SRC/libdemo.c"
done
gcc -O2 -Wall -Wextra -Werror -o "$BIN/test-agent" "$SRC/test-agent.c"
cc_demo "$BIN/demo-hello" hello v1
cc_demo "$BIN/v2/demo-hello" hello v2
cc_demo "$BIN/demo-reload" reload v1
cc_demo "$BIN/demo-other" other v1
cc_demo "$BIN/demo-extra" extra v1
cc_demo "$BIN/demo-lib" lib v1 -DWITH_LIBDEMO -I"$SRC" -L"$BIN/v1" -ldemo -Wl,-rpath,/usr/lib/demo

# ---- rootfs ------------------------------------------------------------------
phase "rootfs (mmdebstrap)"
ROOTFS="$W/rootfs"
mirror=()
[ -z "${FASTSWITCH_VM_MIRROR:-}" ] || mirror=("$FASTSWITCH_VM_MIRROR")
includes=$(
	IFS=,
	echo "${PACKAGES[*]}"
)
# dracut's config must be in place before the kernel postinst runs dracut.
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
	--customize-hook="'$HERE/guest/customize.sh' \"\$1\" '$BIN'" \
	bookworm "$ROOTFS" "${mirror[@]}" </dev/null >&2

# ---- rootfs -> ostree-shaped tree ----------------------------------------------
phase "ostree tree"
TREE=$ROOTFS # reshaped in place
KVER=$(ls "$TREE/usr/lib/modules")
[ "$(wc -w <<<"$KVER")" = 1 ] || die "expected one kernel, got: $KVER"
MODDIR="$TREE/usr/lib/modules/$KVER"
mv "$TREE/boot/vmlinuz-$KVER" "$MODDIR/vmlinuz"
mv "$TREE/boot/initrd.img-$KVER" "$MODDIR/initramfs.img"
rm -rf "${TREE:?}"/boot/* "${TREE:?}"/vmlinuz* "${TREE:?}"/initrd.img*
mv "$TREE/etc" "$TREE/usr/etc"
: >"$TREE/usr/etc/fstab"
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
cat >"$TREE/usr/lib/tmpfiles.d/ostree-layout.conf" <<'EOF'
d /var/home 0755 root root -
d /var/roothome 0700 root root -
d /var/opt 0755 root root -
d /var/srv 0755 root root -
d /var/mnt 0755 root root -
d /var/local 0755 root root -
EOF

# ---- sysroot: init-fs, os-init, commit, deploy ----------------------------------
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

# ---- manifest + raw ext4 image ------------------------------------------------
phase "mkfs.ext4"
IMG="$W/image"
mkdir -p "$IMG"
{
	printf '{\n  "hash": "%s",\n  "os": "%s",\n  "base_ref": "%s",\n' "$HASH" "$OS" "$BASE_REF"
	printf '  "kernel_version": "%s",\n  "disk": "disk.img",\n' "$KVER"
	printf '  "kargs": [%s],\n' "$(printf '"%s",' "${KARGS[@]}" | sed 's/,$//')"
	printf '  "refs": {\n'
	first=1
	while read -r ref; do
		[ $first = 1 ] || printf ',\n'
		first=0
		printf '    "%s": "%s"' "$ref" "$(ostree --repo="$REPO" rev-parse "$ref")"
	done < <(ostree --repo="$REPO" refs | grep -v "^ostree/" | LC_ALL=C sort)
	printf '\n  },\n  "booted_checksum": "%s"\n}\n' "$(ostree --repo="$REPO" rev-parse "$BASE_REF")"
} >"$IMG/image.json"
mkfs.ext4 -q -L ostree-root -m 0 -E lazy_itable_init=0,lazy_journal_init=0 \
	-d "$SYSROOT" "$IMG/disk.img" "$DISK_SIZE" >&2
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
