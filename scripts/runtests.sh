#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs every test program in $1/test under a per-program timeout ($2 s) and
# prints one closing line "N passed, M failed" (tests, summed over programs).
# Extra arguments pick programs by name (test_<name>). VALGRIND=1 runs each
# under valgrind memcheck.
B=$1; T=$2; shift 2
passed=0; failed=0; bad=""
progs=""
if [ $# -gt 0 ]; then
	for n in "$@"; do progs="$progs $B/test/test_$n"; done
else
	# The programs that have a source: a stale binary of a removed test
	# in the build directory is not run.
	for src in test/test_*.c; do
		progs="$progs $B/test/$(basename "$src" .c)"
	done
fi
for p in $progs; do
	name=$(basename "$p")
	log=$(mktemp)
	if [ -n "$VALGRIND" ]; then
		timeout -k 5 $((T * 4)) valgrind -q --error-exitcode=99 --leak-check=full \
			--errors-for-leak-kinds=definite "$p" >"$log" 2>&1
	else
		timeout -k 5 "$T" "$p" >"$log" 2>&1
	fi
	rc=$?
	line=$(grep '^coil-test:' "$log" | tail -1)
	np=$(echo "$line" | sed -n 's/.* \([0-9]*\) passed, \([0-9]*\) failed/\1/p')
	nf=$(echo "$line" | sed -n 's/.* \([0-9]*\) passed, \([0-9]*\) failed/\2/p')
	np=${np:-0}; nf=${nf:-0}
	if [ $rc -ne 0 ] && [ "$nf" = 0 ]; then nf=1; fi
	passed=$((passed + np)); failed=$((failed + nf))
	if [ $rc -ne 0 ]; then
		bad="$bad $name"
		echo "---- $name FAILED (exit $rc) ----"
		tail -n 60 "$log"
	else
		echo "ok   $name ($np tests)"
	fi
	rm -f "$log"
done
echo
[ -n "$bad" ] && echo "failing programs:$bad"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ -z "$bad" ]
