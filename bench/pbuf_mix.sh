#!/bin/bash
# SPDX-License-Identifier: MIT
# pbuf_mix.sh NAME COIL_LOOP_FLAGS PORT - one round of a mixed load on one
# echo_server worker (CPU 0): one bulk connection for 4 s and, from 0.3 s,
# 50 ping-pong connections (64 B) for 3 s (loadgens on CPU 1). Prints the
# ping-pongs' p50/p99/rate, the bulk GB/s and the server's -ENOBUFS
# completions (perf tracepoint: root or perf_event_paranoid -1). Used for
# COIL_LOOP_NO_RECV_CAP (docs/performance.md).
cd "$(dirname "$0")/.." || exit 1
name=$1 flags=$2 port=$3
B=build/rel
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
out=$TMP/perf
COIL_LOOP_FLAGS=$flags taskset -c 0 perf stat -x, -o $out -e io_uring:io_uring_complete --filter 'res == -105' \
  -- $B/examples/echo_server --host 127.0.0.1 --port $port --threads 1 2>/dev/null &
ppid=$!
taskset -c 1 $B/bench/loadgen --port $port --mode wait --timeout 5 2>/dev/null
spid=$(pgrep -P $ppid -f echo_server | head -1)
taskset -c 1 $B/bench/loadgen --port $port --mode bulk --conns 1 --duration 4 > $TMP/bulk 2>&1 &
bp=$!
sleep 0.3
e=$(taskset -c 1 $B/bench/loadgen --port $port --mode echo --conns 50 --size 64 --depth 1 --duration 3 2>&1)
wait $bp
kill -INT $spid; wait $ppid
nb=$(awk -F, '$3 ~ /complete/ {print $1}' $out)
echo "$name p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$e") p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$e") rate=$(sed -n 's/.*msgs_per_s=\([0-9.]*\).*/\1/p' <<<"$e") bulk_gbps=$(sed -n 's/.*gb_per_s=\([0-9.]*\).*/\1/p' $TMP/bulk) enobufs=$nb"
