#!/bin/bash
# SPDX-License-Identifier: MIT
# Usage: make build/rel/bench/slowloris && bash bench/slowloris.sh [ROUNDS] [INTERVAL_MS]
#
# http_echo's request rate and CPU per request with and without 1,000
# slowloris connections, in alternating rounds against the same server, so
# that the host's drift hits both sides alike. The server is pinned to CPU 0,
# wrk and the slowloris generator to CPU 1. Prints each round and two median
# ratios: served req/s (with / alone), which on 2 vCPUs is partly the
# generator taking CPU from wrk, and the server's capacity (alone CPU per
# request / with CPU per request), which is the server's own cost. It is a
# measurement, not a test (rates on a shared 2-vCPU VM swing).
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
INTERVAL=${2:-100} # ms between two header bytes on one slow connection
PORT=19602
taskset -c 0 ./build/rel/examples/http_echo --port $PORT --threads 1 \
	--header-timeout 2000 2>/dev/null &
sleep 0.5
SP=$(pgrep -f "examples/http_echo --port $PORT")
[ -n "$SP" ] || { echo "http_echo did not start"; exit 1; }
cpu() { awk '{print $14+$15}' /proc/$SP/stat; }
# One 3 s wrk run: prints "req/s cpu_ns_per_req".
run() {
	local c0 c1 out rps tot
	c0=$(cpu)
	out=$(taskset -c 1 wrk -t1 -c100 -d3s http://127.0.0.1:$PORT/hello)
	c1=$(cpu)
	rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
	tot=$(echo "$out" | awk '/requests in/ {print $1}')
	echo "$rps $(( (c1 - c0) * 10000000 / tot ))"
}
ratios=()
caps=()
for r in $(seq 1 "$ROUNDS"); do
	read -r b_rps b_cpu < <(run)
	taskset -c 1 ./build/rel/bench/slowloris --port $PORT --conns 1000 \
		--interval "$INTERVAL" --duration 6 > /tmp/coil-slowloris.$$ &
	LP=$!
	sleep 2
	read -r s_rps s_cpu < <(run)
	wait $LP
	ratio=$(awk -v a="$s_rps" -v b="$b_rps" 'BEGIN {printf "%.3f", a / b}')
	ratios+=("$ratio")
	caps+=("$(awk -v a="$b_cpu" -v b="$s_cpu" 'BEGIN {printf "%.3f", a / b}')")
	echo "round $r: alone $b_rps req/s ${b_cpu} ns/req; with 1000 slowloris" \
	     "$s_rps req/s ${s_cpu} ns/req; ratio $ratio;" \
	     "$(cat /tmp/coil-slowloris.$$)"
done
rm -f /tmp/coil-slowloris.$$
kill -TERM "$SP"
wait "$SP" 2>/dev/null
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo "median served ratio (req/s with / alone): $(printf '%s\n' "${ratios[@]}" | median)"
echo "median capacity ratio (CPU/req alone / with): $(printf '%s\n' "${caps[@]}" | median)"
