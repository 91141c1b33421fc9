#!/bin/bash
# Compile the demo programs, libdemo.so (v1, v2) and the test agent.
# Usage: compile-demos.sh SRCDIR OUTDIR
# Runs on the host for the debian12 guest (the host glibc is bookworm's) and in
# a chroot of the rootfs for the debian13 guest (vm/build-image.sh).
set -euo pipefail
SRC=${1:?srcdir}
BIN=${2:?outdir}
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
