#!/bin/sh
# SPDX-License-Identifier: MIT
# Fails (exit 1, listing them) if libcoil.so exports a dynamic symbol whose
# name does not start with coil_ (everything else must stay hidden), or one
# without a symbol version (lib/coil.map gives each export COIL_<n>).
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
# nm -D prints "value type name[@@VERSION]"; the version nodes themselves
# are absolute symbols (type A) named after the node.
names=$(printf '%s\n' "$syms" | awk 'NF >= 3 && $2 != "A" { print $3 }')
bad=$(printf '%s\n' "$names" | sed 's/@.*//' | grep -v '^coil_' | sort -u)
unversioned=$(printf '%s\n' "$names" | grep -v '@@*COIL_' | sort -u)
n=$(printf '%s\n' "$names" | grep -c .)
status=0
if [ -n "$bad" ]; then
	echo "check-exports: $lib exports symbols without the coil_ prefix:" >&2
	printf '  %s\n' $bad >&2
	status=1
fi
if [ -n "$unversioned" ]; then
	echo "check-exports: $lib exports symbols without a COIL_* version (lib/coil.map):" >&2
	printf '  %s\n' $unversioned >&2
	status=1
fi
[ $status -eq 0 ] || exit 1
nodes=$(printf '%s\n' "$syms" | awk 'NF >= 3 && $2 == "A" { print $3 }' | tr '\n' ' ')
echo "check-exports: ok ($n symbols, all coil_*, versioned: $nodes)"
