#!/bin/bash
# SPDX-License-Identifier: MIT
# pbuf_ab.sh - receive pools compared by exact counts (docs/performance.md,
# "Incremental buffer consumption"): echo_server --threads 1 pinned to CPU 0
# under perf stat (task-clock, SQEs, CQEs and -ENOBUFS completions from the
# io_uring tracepoints: needs root or perf_event_paranoid -1), loadgen
# pinned to CPU 1 for a fixed number of messages; variants alternate. The
# enobufs count includes the one -ENOBUFS completion of coil's kernel probe
# (the multishot recv cap's test) where the kernel has that cap. KEEP=FILE
# keeps the last perf output.
#
#   bench/pbuf_ab.sh [ROUNDS] [COUNT]     (defaults 10 300000)
#   LGARGS="--mode bulk --conns 1" bench/pbuf_ab.sh 5 20000
#   VARIANTS="name|COIL_LOOP_FLAGS|echo_server args ..." overrides the list.
cd "$(dirname "$0")/.." || exit 1
B=build/rel
R=${1:-10} C=${2:-300000}
LGARGS=${LGARGS:---mode echo --conns 50 --size 4096 --depth 4}
VARIANTS=${VARIANTS:-"noinc|0| inc64x32k|0x40| inc128x16k|0x40|--bufs,128x16384 inc64x16k|0x40|--bufs,64x16384"}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
port=19800
one() {
	local name=$1 flags=$2 out=${KEEP:-$TMP/perf} ppid spid lg hwm
	shift 2
	COIL_LOOP_FLAGS=$flags taskset -c 0 perf stat -x, -o "$out" \
		-e task-clock -e io_uring:io_uring_submit_req \
		-e io_uring:io_uring_complete \
		-e io_uring:io_uring_complete --filter 'res == -105' \
		-- $B/examples/echo_server --host 127.0.0.1 --port $port \
		--threads 1 "$@" 2>/dev/null &
	ppid=$!
	if ! taskset -c 1 $B/bench/loadgen --port $port --mode wait --timeout 5; then
		echo "$name: no server"; kill "$ppid"; return
	fi
	spid=$(pgrep -P "$ppid" -f echo_server | head -1)
	lg=$(taskset -c 1 $B/bench/loadgen --port $port $LGARGS --count "$C" \
		--timeout 60)
	hwm=$(awk '/^VmHWM:/ { print $2 }' /proc/"$spid"/status)
	kill -INT "$spid"
	wait "$ppid"
	awk -F, -v n="$name" -v h="$hwm" -v lg="$lg" '
		$3 ~ /task-clock/ { tc = $1 }
		$3 ~ /submit_req/ { sq = $1 }
		$3 ~ /io_uring_complete/ { if (cq == "") cq = $1; else nb = $1 }
		END { m = lg; sub(/.*msgs=/, "", m); sub(/ .*/, "", m)
		      printf "%s msgs=%d cpu_ns_per_msg=%.0f sqe_per_msg=%.3f " \
			     "cqe_per_msg=%.3f enobufs=%d hwm_kib=%d\n",
			     n, m, tc * 1e6 / m, sq / m, cq / m, nb, h }' "$out"
}
for r in $(seq "$R"); do
	for v in $VARIANTS; do
		IFS='|' read -r name flags args <<<"$v"
		port=$((port + 1))
		# shellcheck disable=SC2086
		one "$name" "$flags" ${args//,/ }
	done
done
