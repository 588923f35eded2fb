#!/bin/sh
# SPDX-License-Identifier: MIT
# Fails (exit 1, listing them) if a function exported by libcoil.so has no
# man page under MANROOT/man3, or if a page does not render cleanly:
# `man --warnings -l` (groff -ww) must print nothing on stderr, and the
# NAME line must parse for whatis (lexgrog), for every page and link.
# Usage: scripts/check-man.sh path/to/libcoil.so MANROOT
set -u
lib=${1:?usage: check-man.sh path/to/libcoil.so MANROOT}
root=${2:?usage: check-man.sh path/to/libcoil.so MANROOT}
for t in nm man; do
	if ! command -v $t >/dev/null 2>&1; then
		echo "check-man: $t not found (install binutils, man-db, groff)" >&2
		exit 2
	fi
done
[ -d "$root/man3" ] || { echo "check-man: no $root/man3" >&2; exit 2; }
syms=$(nm -D --defined-only "$lib" | awk 'NF >= 3 && $2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort -u) || exit 2
status=0
missing=""
for s in $syms; do
	[ -f "$root/man3/$s.3" ] || missing="$missing $s"
done
if [ -n "$missing" ]; then
	echo "check-man: exported without a page in $root/man3:" >&2
	printf '  %s\n' $missing >&2
	status=1
fi
n=0
cd "$root" || exit 2
for p in man3/*.3; do
	n=$((n + 1))
	# .so links resolve against the man root, as for installed pages.
	w=$(MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l "$p" 2>&1 >/dev/null)
	if [ -n "$w" ]; then
		echo "check-man: $p renders with warnings:" >&2
		printf '%s\n' "$w" | sed 's/^/  /' >&2
		status=1
	fi
	if command -v lexgrog >/dev/null 2>&1 && ! lexgrog "$p" >/dev/null 2>&1; then
		echo "check-man: $p: NAME section does not parse (lexgrog)" >&2
		status=1
	fi
done
[ $status -eq 0 ] && echo "check-man: ok ($n pages, every export has one, all render cleanly)"
exit $status
