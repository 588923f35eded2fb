#!/bin/sh
# SPDX-License-Identifier: MIT
# Fails (exit 1, listing them) if a dynamic symbol exported by libcoil.so has
# no "### name" heading in docs/api.md, or does not start with coil_.
# Usage: scripts/check-docs.sh path/to/libcoil.so [path/to/api.md]
set -u
lib=${1:?usage: check-docs.sh path/to/libcoil.so [api.md]}
root=$(cd "$(dirname "$0")/.." && pwd)
api=${2:-$root/docs/api.md}
if ! command -v nm >/dev/null 2>&1; then
	echo "check-docs: nm not found (install binutils)" >&2
	exit 2
fi
for f in "$lib" "$api"; do
	if [ ! -f "$f" ]; then
		echo "check-docs: no such file: $f" >&2
		exit 2
	fi
done
# Version nodes (type A) are not functions; name@@COIL_0 is name.
syms=$(nm -D --defined-only "$lib" | awk 'NF >= 3 && $2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort -u) || exit 2
# The headings: lines of exactly "### name" (trailing blanks tolerated).
heads=$(sed -n 's/^### \([A-Za-z_][A-Za-z0-9_]*\)[[:space:]]*$/\1/p' "$api" | sort -u)
status=0
undoc=""
for s in $syms; do
	printf '%s\n' "$heads" | grep -qxF "$s" || undoc="$undoc $s"
done
if [ -n "$undoc" ]; then
	echo "check-docs: exported but without a '### name' heading in $api:" >&2
	printf '  %s\n' $undoc >&2
	status=1
fi
bad=$(printf '%s\n' "$syms" | grep -v '^coil_')
if [ -n "$bad" ]; then
	echo "check-docs: exported symbols without the coil_ prefix:" >&2
	printf '  %s\n' $bad >&2
	status=1
fi
[ $status -eq 0 ] && echo "check-docs: ok ($(printf '%s\n' "$syms" | wc -l) exported symbols, each documented)"
exit $status
