#!/bin/sh
# SPDX-License-Identifier: MIT
# Extracts every C code block marked as a complete program (a fence whose
# info string is "c program") from Markdown files, and optionally compiles
# and links each one against a built libcoil.a.
#
#   scripts/extract-doc-examples.sh [-c] [-b BUILD_DIR] [-o OUT_DIR] [FILE...]
#
#   FILE...       Markdown files (default: README.md docs/*.md)
#   -o OUT_DIR    where the .c files go (default: a new temporary directory)
#   -c            compile and link each program; exit 1 if any fails
#   -b BUILD_DIR  the build to link against (default: build/rel)
#
# Environment for -c: CC (default cc), EXAMPLE_CFLAGS (extra compile flags,
# e.g. -fsanitize=address), EXAMPLE_LIBS (default -luring -ljemalloc
# -lpthread -lm; sanitizer builds have no jemalloc).
#
# Each extracted file starts with a #line directive, so compiler messages
# point into the Markdown file. Prints one line per program and a summary
# "N programs extracted[, N compiled]".
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
compile=0
build=build/rel
out=""
while getopts cb:o: opt; do
	case $opt in
	c) compile=1 ;;
	b) build=$OPTARG ;;
	o) out=$OPTARG ;;
	*) sed -n '3,20p' "$0" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
cd "$root" || exit 2
if [ $# -eq 0 ]; then
	set -- README.md
	for f in docs/*.md; do
		[ -f "$f" ] && set -- "$@" "$f"
	done
fi
if [ -z "$out" ]; then
	out=$(mktemp -d "${TMPDIR:-/tmp}/coil-doc-examples.XXXXXX") || exit 2
fi
mkdir -p "$out" || exit 2

n=0
list="$out/.programs"
: >"$list"
for md in "$@"; do
	[ -f "$md" ] || { echo "extract-doc-examples: no such file: $md" >&2; exit 2; }
	stem=$(printf '%s' "$md" | sed 's|[^A-Za-z0-9]|_|g')
	# awk writes one file per block: <out>/<stem>_L<line>.c
	awk -v out="$out" -v stem="$stem" -v md="$md" -v list="$list" '
		/^```c program[ \t]*$/ && !inblk {
			inblk = 1
			file = out "/" stem "_L" (NR + 1) ".c"
			printf "#line %d \"%s\"\n", NR + 1, md > file
			print file >> list
			next
		}
		/^```[ \t]*$/ && inblk { inblk = 0; close(file); next }
		inblk { print > file }
		END {
			if (inblk) {
				printf "extract-doc-examples: %s: unterminated block\n", md > "/dev/stderr"
				exit 1
			}
		}' "$md" || exit 1
done
n=$(wc -l <"$list")

if [ "$compile" -eq 0 ]; then
	cat "$list"
	rm -f "$list"
	echo "$n programs extracted in $out"
	exit 0
fi

cc=${CC:-cc}
libs=${EXAMPLE_LIBS:--luring -ljemalloc -lpthread -lm}
lib="$build/libcoil.a"
if [ ! -f "$lib" ]; then
	echo "extract-doc-examples: $lib not found (run: make $lib)" >&2
	exit 2
fi
ok=0
failed=""
while read -r src; do
	bin=${src%.c}
	# shellcheck disable=SC2086
	if $cc -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Werror \
		-I"$root/include" ${EXAMPLE_CFLAGS:-} -o "$bin" "$src" \
		"$lib" $libs 2>"$bin.log"; then
		ok=$((ok + 1))
		echo "ok   $src"
	else
		failed="$failed $src"
		echo "FAIL $src"
		sed 's/^/     /' "$bin.log"
	fi
done <"$list"
rm -f "$list"
echo "$n programs extracted in $out, $ok compiled"
[ -z "$failed" ]
