#!/bin/bash
# SPDX-License-Identifier: MIT
# Usage: make build/rel/bench/slowloris && bash bench/slowloris.sh
# Server CPU per request with and without 1,000 slowloris connections.
cd /work/main
taskset -c 0 ./build/rel/examples/http_echo --port 19602 --threads 1 --header-timeout 2000 2>/dev/null &
sleep 0.5
SP=$(pgrep -f "examples/http_echo --port 19602")
cpu() { awk '{print $14+$15}' /proc/$SP/stat; }
run() {
  c0=$(cpu); out=$(taskset -c 1 wrk -t1 -c100 -d3s http://127.0.0.1:19602/hello); c1=$(cpu)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}'); tot=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$1: req/s=$rps server_cpu_ns_per_req=$(( (c1-c0) * 10000000 / tot ))"
}
run baseline
./build/rel/bench/slowloris --port 19602 --conns 1000 --interval 100 --duration 7 > /tmp/slow.txt &
LP=$!
sleep 2
run "with 1000 slowloris conns"
wait $LP
cat /tmp/slow.txt
kill -TERM $SP
wait $SP
