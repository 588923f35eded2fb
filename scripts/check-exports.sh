#!/bin/sh
# SPDX-License-Identifier: MIT
# Fails (exit 1, listing them) if libcoil.so exports a dynamic symbol whose
# name does not start with coil_: everything else must stay hidden.
# Usage: scripts/check-exports.sh path/to/libcoil.so
set -u
lib=${1:?usage: check-exports.sh path/to/libcoil.so}
if ! command -v nm >/dev/null 2>&1; then
	echo "check-exports: nm not found (install binutils)" >&2
	exit 2
fi
if [ ! -f "$lib" ]; then
	echo "check-exports: no such file: $lib" >&2
	exit 2
fi
syms=$(nm -D --defined-only "$lib") || {
	echo "check-exports: nm failed on $lib" >&2
	exit 2
}
# nm -D prints "value type name"; symbol versions (name@@V) are kept whole.
bad=$(printf '%s\n' "$syms" | awk 'NF >= 3 { print $3 }' | grep -v '^coil_' | sort -u)
n=$(printf '%s\n' "$syms" | awk 'NF >= 3' | wc -l)
if [ -n "$bad" ]; then
	echo "check-exports: $lib exports symbols without the coil_ prefix:" >&2
	printf '  %s\n' $bad >&2
	exit 1
fi
echo "check-exports: ok ($n symbols, all coil_*)"
