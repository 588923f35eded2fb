#!/bin/bash
# SPDX-License-Identifier: MIT
# bench/run.sh - runs the benchmark scenarios against every server, prints medians and ratios.
#
# Usage (from the repository root, after `make bench-build`):
#   bash bench/run.sh
# Knobs (environment):
#   B=build/rel      where the binaries are
#   ROUNDS=5 DUR=2   rounds (servers alternate A B C A B C) and seconds per measurement
#   IDLE_CONNS=10000 connections held for the memory scenario; MEM_ROUNDS=1
#   SERVER_CPU=0 LOAD_CPU=1   taskset pinning; THREADS=1 server threads
#   PORT_BASE=19000  first port; every (round, server) gets its own port
#   SCENARIOS="echo1 echo50 echo500 echo4k bulk relay http mem counts allocs fairness enter"
#   UPSTREAM_CPU=$LOAD_CPU   where the relay scenario's upstream echo server runs
#   COUNT_MSGS=20000 messages per server for the syscall counts (perf stat, else strace -c -f)
#   BATCH_WAIT=4000  coil_batch's --batch-wait (µs: batch_wait_us, the kernel's min-wait)
#
# Every server is started by this script, pinned, waited for (it must accept
# a connection), measured, then stopped by its PID. The trap kills only the
# PIDs started here. Everything is bounded: loadgen and wrk stop by
# themselves, servers get SIGTERM then SIGKILL after 2 s.
set -u
cd "$(dirname "$0")/.." || exit 1

B=${B:-build/rel}
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-2}
IDLE_CONNS=${IDLE_CONNS:-10000}
MEM_ROUNDS=${MEM_ROUNDS:-1}
IDLE_HOLD=${IDLE_HOLD:-2}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
THREADS=${THREADS:-1}
PORT_BASE=${PORT_BASE:-19000}
SCENARIOS=${SCENARIOS:-"echo1 echo50 echo500 echo4k bulk relay http mem counts allocs fairness enter"}
UPSTREAM_CPU=${UPSTREAM_CPU:-$LOAD_CPU}
COUNT_MSGS=${COUNT_MSGS:-20000}
BATCH_WAIT=${BATCH_WAIT:-4000}
NGINX=${NGINX:-/usr/sbin/nginx}
LOADGEN=$B/bench/loadgen
HZ=$(getconf CLK_TCK)

# "name:command". The command gets "--port P --threads N" appended; @nginx
# is generated below; leading VAR=value words go to the environment. The
# first entry of each list is the floor the ratios are computed against,
# the second the second reference. coil_noreg is coil with one ring feature
# turned off (COIL_LOOP_FLAGS, see docs/api.md), to measure what it brings;
# coil_batch is coil with batched waits on (batch_wait_us, off by default);
# coil_nofix and http_nofix are coil without its fixed file table;
# coil_inc is coil with incremental provided buffer consumption (opt in,
# COIL_LOOP_PBUF_INC) and the 2 MiB receive pool that goes with it.
ECHO_SERVERS=(
	"uring:$B/bench/uring_echo"
	"epoll:$B/bench/epoll_echo"
	"libuv:$B/bench/uv_echo"
	"coil:$B/examples/echo_server --host 127.0.0.1"
	"coil_noreg:COIL_LOOP_FLAGS=0x8 $B/examples/echo_server --host 127.0.0.1"
	"coil_nofix:COIL_LOOP_FLAGS=0x10 $B/examples/echo_server --host 127.0.0.1"
	"coil_inc:COIL_LOOP_FLAGS=0x40 $B/examples/echo_server --host 127.0.0.1"
	"coil_batch:$B/examples/echo_server --host 127.0.0.1 --batch-wait $BATCH_WAIT"
)
# The relay scenario: the same bulk stream through bench/relay
# (coil_channel_relay both ways) to an upstream echo server (@UP: the
# uring_echo started for it on UPSTREAM_CPU), beside the plain bulk echo of
# the floor and of coil, and the floor's own relay (uring_echo --upstream),
# in the same rounds.
RELAY_SERVERS=(
	"uring:$B/bench/uring_echo"
	"coil:$B/examples/echo_server --host 127.0.0.1"
	"uring_relay:$B/bench/uring_echo --upstream @UP"
	"coil_relay:$B/bench/relay --host 127.0.0.1 --upstream @UP"
)
UPSTREAM="$B/bench/uring_echo"
HTTP_SERVERS=(
	"uring_http:$B/bench/uring_http"
	"nginx:@nginx"
	"epoll_http:$B/bench/epoll_http"
	"coil_http:$B/examples/http_echo --host 127.0.0.1"
	"http_nofix:COIL_LOOP_FLAGS=0x10 $B/examples/http_echo --host 127.0.0.1"
)

has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }

TMP=$(mktemp -d /tmp/coil-bench.XXXXXX) || exit 1
RES=$TMP/results
: >"$RES"
STARTED=" " # PIDs started here and not yet reaped
forget() { STARTED=${STARTED/ $1 / }; }
# TERM, up to 2 s grace, then KILL for $1 and the children it had (nginx
# workers would outlive a SIGKILLed master); then reap it.
stop_pid() {
	local pid=$1 kids i
	kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null)
	kill -TERM "$pid" 2>/dev/null
	for i in $(seq 40); do
		alive "$pid" || break
		sleep 0.05
	done
	if alive "$pid"; then
		kill -KILL "$pid" 2>/dev/null
		for i in $kids; do kill -KILL "$i" 2>/dev/null; done
	fi
	wait "$pid" 2>/dev/null
	forget "$pid"
}
# Running (not gone, not a zombie)?
alive() {
	local st
	st=$(awk '{ s = $0; sub(/^.*\) /, "", s); print substr(s, 1, 1) }' \
		/proc/"$1"/stat 2>/dev/null)
	[ -n "$st" ] && [ "$st" != Z ]
}
cleanup() {
	local p
	for p in $STARTED; do
		stop_pid "$p"
	done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in "$LOADGEN" "$B/bench/epoll_echo" "$B/bench/uring_echo" "$B/bench/epoll_http"; do
	if [ ! -x "$t" ]; then
		echo "run.sh: $t is missing: run 'make bench-build' first" >&2
		exit 1
	fi
done

# Both the server and the load generator hold IDLE_CONNS sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 100)) ]; then
	IDLE_CONNS=$(($(ulimit -n) - 100))
	echo "note: open-file limit $(ulimit -n): memory scenario uses $IDLE_CONNS connections"
fi

# ---------------------------------------------------------------- helpers

# utime+stime in clock ticks of a process and its children (nginx workers).
cpu_ticks() {
	local p t=0 v
	for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		v=$(awk '{ s = $0; sub(/^.*\) /, "", s); split(s, a, " ");
			   print a[12] + a[13] }' /proc/"$p"/stat 2>/dev/null) || continue
		t=$((t + ${v:-0}))
	done
	echo "$t"
}

rss_kb() {
	local p t=0 v
	for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		v=$(awk '/^VmRSS:/ { print $2 }' /proc/"$p"/status 2>/dev/null)
		t=$((t + ${v:-0}))
	done
	echo "$t"
}

# Is anything listening on TCP port $1 (IPv4 or IPv6)?
port_busy() {
	local hex
	hex=$(printf ':%04X' "$1")
	awk -v h="$hex" '$4 == "0A" && substr($2, length($2) - 4) == h { f = 1 }
			 END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

kv() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

rec() { echo "$1 $2 $3 $4" >>"$RES"; } # scenario server key value

calc() { awk "BEGIN { printf \"$1\", $2 }"; }

nginx_conf() { # port dir
	mkdir -p "$2/tmp"
	cat >"$2/nginx.conf" <<EOF
# generated by bench/run.sh: loopback only, no logs on the hot path
worker_processes $THREADS;
daemon off;
master_process on;
pid $2/nginx.pid;
error_log $2/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
	access_log off;
	client_body_temp_path $2/tmp/body;
	proxy_temp_path $2/tmp/proxy;
	fastcgi_temp_path $2/tmp/fastcgi;
	uwsgi_temp_path $2/tmp/uwsgi;
	scgi_temp_path $2/tmp/scgi;
	keepalive_requests 1000000;
	keepalive_timeout 60s;
	server {
		listen 127.0.0.1:$1;
		location /hello { return 200 "hello\n"; }
	}
}
EOF
}

SPID=
SKIPPED=
# start_server name command port: 0 started, 2 not built, 1 failed
start_server() {
	local name=$1 cmd=$2 port=$3 bin dir envs=
	SPID=
	while [[ $cmd =~ ^[A-Z_]+=[^\ ]*\  ]]; do
		envs="$envs ${cmd%% *}"
		cmd=${cmd#* }
	done
	if [ "$cmd" = @nginx ]; then
		[ -x "$NGINX" ] || { note_skip "$name" "$NGINX not installed"; return 2; }
		dir=$TMP/nginx-$port
		nginx_conf "$port" "$dir"
		cmd="$NGINX -e $dir/error.log -p $dir/ -c $dir/nginx.conf"
	else
		bin=${cmd%% *}
		[ -x "$bin" ] || { note_skip "$name" "not built yet ($bin missing)"; return 2; }
		cmd="$cmd --port $port --threads $THREADS"
	fi
	if port_busy "$port"; then
		echo "  $name: port $port is in use by someone else, skipped"
		return 1
	fi
	# shellcheck disable=SC2086 # cmd is a command line on purpose
	env $envs taskset -c "$SERVER_CPU" $cmd >"$TMP/$name.log" 2>&1 &
	SPID=$!
	STARTED="$STARTED$SPID "
	if ! taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --mode wait --timeout 5 2>/dev/null; then
		echo "  $name: did not accept connections on port $port within 5 s:"
		tail -5 "$TMP/$name.log" | sed 's/^/    /'
		stop_server
		return 1
	fi
	return 0
}

stop_server() {
	[ -n "$SPID" ] || return
	stop_pid "$SPID"
	SPID=
}

# The relay's upstream: started on UPSTREAM_CPU, waited for, stopped by PID.
UPID=
start_upstream() { # port
	UPID=
	if port_busy "$1"; then
		echo "  upstream: port $1 is in use by someone else, skipped"
		return 1
	fi
	taskset -c "$UPSTREAM_CPU" "$UPSTREAM" --port "$1" --threads "$THREADS" \
		>"$TMP/upstream.log" 2>&1 &
	UPID=$!
	STARTED="$STARTED$UPID "
	if ! taskset -c "$LOAD_CPU" "$LOADGEN" --port "$1" --mode wait --timeout 5 2>/dev/null; then
		echo "  upstream: did not accept connections on port $1 within 5 s"
		stop_upstream
		return 1
	fi
}
stop_upstream() {
	[ -n "$UPID" ] || return
	stop_pid "$UPID"
	UPID=
}

# A server that died (crash, assertion) is reported and not measured again.
server_gone() { # scenario name
	alive "$SPID" && return 1
	echo "  $2 $1: FAILED: the server is not running any more:"
	tail -3 "$TMP/$2.log" | sed 's/^/    /'
	rec "$1" "$2" fail 1
	return 0
}

note_skip() {
	case " $SKIPPED " in *" $1 "*) return ;; esac
	SKIPPED="$SKIPPED $1"
	echo "  $1: $2: skipped"
}

# echo_run scenario server port conns mode [loadgen args...]
echo_run() {
	local sc=$1 name=$2 port=$3 conns=$4 mode=$5 out c0 c1 msgs bytes secs dt
	shift 5
	server_gone "$sc" "$name" && return
	c0=$(cpu_ticks "$SPID")
	out=$(taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --mode "$mode" \
		--conns "$conns" --duration "$DUR" "$@" 2>"$TMP/loadgen.err")
	local rc=$?
	c1=$(cpu_ticks "$SPID")
	if [ $rc -ne 0 ] || [ -z "$out" ] || ! alive "$SPID"; then
		echo "  $name $sc: FAILED: $(tr '\n' ' ' <"$TMP/loadgen.err")"
		rec "$sc" "$name" fail 1
		return
	fi
	msgs=$(kv msgs "$out"); bytes=$(kv bytes "$out"); secs=$(kv secs "$out")
	dt=$((c1 - c0))
	rec "$sc" "$name" rate "$(kv msgs_per_s "$out")"
	rec "$sc" "$name" gbps "$(kv gb_per_s "$out")"
	rec "$sc" "$name" p50 "$(kv p50_us "$out")"
	rec "$sc" "$name" p99 "$(kv p99_us "$out")"
	rec "$sc" "$name" cpu_pct "$(calc %.0f "$dt / $HZ / $secs * 100")"
	[ "$msgs" -gt 0 ] && rec "$sc" "$name" cpu_per "$(calc %.0f "$dt * 1e9 / $HZ / $msgs")"
	[ "$bytes" -gt 0 ] && rec "$sc" "$name" cpu_mb "$(calc %.1f "$dt * 1e6 / $HZ / ($bytes / 1e6)")"
}

to_us() { # wrk latency "1.23ms" -> microseconds
	awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
		if (u == "s") n *= 1e6; else if (u == "ms") n *= 1e3;
		else if (u == "m") n *= 6e7; printf "%.1f", n }'
}

http_run() {
	local name=$1 port=$2 out c0 c1 reqs secs rps dt
	server_gone http "$name" && return
	c0=$(cpu_ticks "$SPID")
	out=$(timeout -k 2 $((DUR + 10)) taskset -c "$LOAD_CPU" wrk -t1 -c100 \
		-d"${DUR}s" --latency "http://127.0.0.1:$port/hello" 2>&1)
	local rc=$?
	c1=$(cpu_ticks "$SPID")
	reqs=$(sed -n 's/^ *\([0-9]*\) requests in \([0-9.]*\)s.*/\1/p' <<<"$out")
	secs=$(sed -n 's/^ *[0-9]* requests in \([0-9.]*\)s.*/\1/p' <<<"$out")
	rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' <<<"$out")
	if [ $rc -ne 0 ] || [ -z "$reqs" ] || [ "$reqs" = 0 ]; then
		echo "  $name http: FAILED: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
		rec http "$name" fail 1
		return
	fi
	if grep -q -e "Non-2xx" -e "Socket errors" <<<"$out"; then
		echo "  $name http: wrk reports: $(grep -e "Non-2xx" -e "Socket errors" <<<"$out" | tr -s ' ')"
		rec http "$name" errors 1
	fi
	dt=$((c1 - c0))
	rec http "$name" rate "$rps"
	rec http "$name" p50 "$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
	rec http "$name" p99 "$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
	rec http "$name" cpu_pct "$(calc %.0f "$dt / $HZ / $secs * 100")"
	rec http "$name" cpu_per "$(calc %.0f "$dt * 1e9 / $HZ / $reqs")"
}

mem_run() {
	local name=$1 port=$2 r0 r1 lpid i
	# Touch the server's fixed pools (buffer rings, read buffers) first, so
	# that the RSS growth below is what the connections themselves cost.
	taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --conns 300 \
		--duration 0.3 >/dev/null 2>&1
	taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --mode bulk --conns 4 \
		--duration 0.3 >/dev/null 2>&1
	sleep 0.2
	r0=$(rss_kb "$SPID")
	rm -f "$TMP/ready"
	taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --mode idle \
		--conns "$IDLE_CONNS" --duration "$IDLE_HOLD" --timeout 30 \
		--ready-file "$TMP/ready" >"$TMP/idle.out" 2>"$TMP/loadgen.err" &
	lpid=$!
	STARTED="$STARTED$lpid "
	for i in $(seq 700); do # up to 35 s: loadgen's own cap is 30 s
		[ -e "$TMP/ready" ] && break
		kill -0 "$lpid" 2>/dev/null || break
		sleep 0.05
	done
	if [ ! -e "$TMP/ready" ]; then
		stop_pid "$lpid"
		echo "  $name mem: FAILED: $(tr '\n' ' ' <"$TMP/loadgen.err")"
		rec mem "$name" fail 1
		return
	fi
	sleep 0.3 # let the last accepts settle
	r1=$(rss_kb "$SPID")
	wait "$lpid"
	forget "$lpid"
	rec mem "$name" rss0 "$r0"
	rec mem "$name" rss1 "$r1"
	rec mem "$name" per_conn "$(calc %.0f "($r1 - $r0) * 1024 / $IDLE_CONNS")"
}

# Syscalls of the server while it echoes exactly COUNT_MSGS messages over
# $conns connections, counted by the kernel: perf stat on the syscall
# tracepoints (raw_syscalls:sys_enter, syscalls:sys_enter_io_uring_enter),
# attached to every thread of the running server after its warm-up and
# stopped with SIGINT once loadgen has had all its echoes. Exact counts at
# almost no cost to the server. Without perf (or tracepoints), strace -c -f,
# which is exact too but slows the server, so more completions gather per
# io_uring_enter: COUNT_METHOD says which one ran.
COUNT_METHOD=
count_method() {
	if [ -z "$COUNT_METHOD" ]; then
		if command -v perf >/dev/null &&
			perf stat -e syscalls:sys_enter_io_uring_enter -e raw_syscalls:sys_enter \
				-- true >/dev/null 2>&1; then
			COUNT_METHOD=perf
		elif command -v strace >/dev/null; then
			COUNT_METHOD=strace
		else
			COUNT_METHOD=none
		fi
	fi
	echo "$COUNT_METHOD"
}
count_run() { # server port conns
	local name=$1 port=$2 conns=$3 cpid out calls enters m
	server_gone counts "$name" && return
	m=$(count_method)
	case $m in
	perf)
		perf stat -x, -e raw_syscalls:sys_enter -e syscalls:sys_enter_io_uring_enter \
			-p "$SPID" -o "$TMP/count.out" 2>"$TMP/count.err" &
		;;
	strace)
		strace -qq -f -c -o "$TMP/count.out" -p "$SPID" 2>"$TMP/count.err" &
		;;
	*)
		note_skip counts "neither perf nor strace installed"
		return
		;;
	esac
	cpid=$!
	STARTED="$STARTED$cpid "
	sleep 0.5 # attached to every thread by then
	out=$(taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --mode echo \
		--conns "$conns" --count "$COUNT_MSGS" --timeout 60 2>"$TMP/loadgen.err")
	local rc=$?
	kill -INT "$cpid" 2>/dev/null
	wait "$cpid" 2>/dev/null
	forget "$cpid"
	if [ $rc -ne 0 ] || [ ! -s "$TMP/count.out" ]; then
		echo "  $name counts: FAILED: $(tr '\n' ' ' <"$TMP/loadgen.err" "$TMP/count.err")"
		rec "counts$conns" "$name" fail 1
		return
	fi
	if [ "$m" = perf ]; then
		# CSV: value,unit,event,...
		calls=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$TMP/count.out")
		enters=$(awk -F, '$3 == "syscalls:sys_enter_io_uring_enter" { print $1 }' "$TMP/count.out")
	else
		# columns: % time, seconds, usecs/call, calls, [errors,] syscall
		calls=$(awk '$NF == "total" { print $4 }' "$TMP/count.out")
		enters=$(awk '$NF == "io_uring_enter" { print $4 }' "$TMP/count.out")
	fi
	rec "counts$conns" "$name" sys_per "$(calc %.3f "${calls:-0} / $COUNT_MSGS")"
	rec "counts$conns" "$name" enter_per "$(calc %.3f "${enters:-0} / $COUNT_MSGS")"
}

# median scenario server key (empty if none)
median() {
	awk -v s="$1" -v n="$2" -v k="$3" '$1 == s && $2 == n && $3 == k { print $4 }' "$RES" |
		sort -g | awk '{ v[NR] = $1 } END { if (!NR) exit;
			if (NR % 2) print v[(NR + 1) / 2];
			else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# (max - min) / median of a metric across rounds, in %: how noisy it was.
spread() {
	awk -v s="$1" -v n="$2" -v k="$3" '$1 == s && $2 == n && $3 == k { print $4 }' "$RES" |
		sort -g | awk '{ v[NR] = $1 } END { if (!NR) exit;
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
			if (m > 0) printf "%.0f%%", (v[NR] - v[1]) / m * 100 }'
}

count_of() {
	awk -v s="$1" -v n="$2" -v k="$3" '$1 == s && $2 == n && $3 == k' "$RES" | wc -l
}

ratio() { # a b -> "a/b" formatted, or "-"
	if [ -n "$1" ] && [ -n "$2" ] && awk "BEGIN { exit !($2 > 0) }"; then
		calc "%.2fx" "$1 / $2"
	else
		echo -
	fi
}

# ---------------------------------------------------------------- header

echo "coil benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "host: $(uname -sr), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), loopback only"
echo "pinning: servers on CPU $SERVER_CPU (--threads $THREADS, nginx worker_processes $THREADS), loadgen and wrk on CPU $LOAD_CPU (taskset)"
echo "rounds: $ROUNDS x ${DUR}s per measurement, servers alternate in each round; figures are medians"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (anything well above 0 means other work competes for the CPUs)"
echo

# ---------------------------------------------------------------- rounds

NSERV=$((${#ECHO_SERVERS[@]} + ${#HTTP_SERVERS[@]} + ${#RELAY_SERVERS[@]} * 2))
T0=$(date +%s)
for r in $(seq "$ROUNDS"); do
	echo "round $r/$ROUNDS ..."
	i=0
	if has echo1 || has echo50 || has echo500 || has echo4k || has bulk; then
		for e in "${ECHO_SERVERS[@]}"; do
			name=${e%%:*}; cmd=${e#*:}
			port=$((PORT_BASE + (r - 1) * NSERV + i)); i=$((i + 1))
			start_server "$name" "$cmd" "$port" || continue
			# A short warm-up so the first measurement is not a cold start.
			taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --conns 50 \
				--duration 0.3 >/dev/null 2>&1
			has echo1 && echo_run echo1 "$name" "$port" 1 echo
			has echo50 && echo_run echo50 "$name" "$port" 50 echo
			has echo500 && echo_run echo500 "$name" "$port" 500 echo
			has echo4k && echo_run echo4k "$name" "$port" 50 echo \
				--size 4096 --depth 4
			has bulk && echo_run bulk "$name" "$port" 1 bulk
			stop_server
		done
	fi
	i=$((${#ECHO_SERVERS[@]} + ${#HTTP_SERVERS[@]}))
	if has relay; then
		for e in "${RELAY_SERVERS[@]}"; do
			name=${e%%:*}; cmd=${e#*:}
			port=$((PORT_BASE + (r - 1) * NSERV + i)); i=$((i + 2))
			if [[ $cmd == *@UP* ]]; then
				[ -x "${cmd%% *}" ] || { note_skip "$name" "not built yet (${cmd%% *} missing)"; continue; }
				start_upstream $((port + 1)) || continue
				cmd=${cmd//@UP/127.0.0.1:$((port + 1))}
			fi
			if start_server "$name" "$cmd" "$port"; then
				taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --mode bulk \
					--conns 1 --duration 0.3 >/dev/null 2>&1
				u0=; [ -n "$UPID" ] && u0=$(cpu_ticks "$UPID")
				echo_run relay "$name" "$port" 1 bulk
				[ -n "$u0" ] && rec relay "$name" up_pct \
					"$(calc %.0f "($(cpu_ticks "$UPID") - $u0) / $HZ / $DUR * 100")"
				stop_server
			fi
			stop_upstream
		done
	fi
	i=${#ECHO_SERVERS[@]}
	if has http; then
		for e in "${HTTP_SERVERS[@]}"; do
			name=${e%%:*}; cmd=${e#*:}
			port=$((PORT_BASE + (r - 1) * NSERV + i)); i=$((i + 1))
			start_server "$name" "$cmd" "$port" || continue
			timeout 5 taskset -c "$LOAD_CPU" wrk -t1 -c100 -d1s \
				"http://127.0.0.1:$port/hello" >/dev/null 2>&1
			http_run "$name" "$port"
			stop_server
		done
	fi
done

if has mem; then
	echo "memory: $IDLE_CONNS idle connections per echo server ..."
	for r in $(seq "$MEM_ROUNDS"); do
		i=0
		for e in "${ECHO_SERVERS[@]}"; do
			name=${e%%:*}; cmd=${e#*:}
			port=$((PORT_BASE + (ROUNDS + r - 1) * NSERV + i)); i=$((i + 1))
			# jemalloc (coil) with its page decay off: by default the idle
			# connections reuse the pages the warm-up freed and the growth
			# reads low. Other allocators ignore MALLOC_CONF.
			start_server "$name" "MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0 $cmd" "$port" || continue
			mem_run "$name" "$port"
			stop_server
		done
	done
fi
if has counts; then
	echo "syscall counts: $COUNT_MSGS messages per echo server, counted with $(count_method) ..."
	i=0
	for e in "${ECHO_SERVERS[@]}"; do
		name=${e%%:*}; cmd=${e#*:}
		port=$((PORT_BASE + (ROUNDS + MEM_ROUNDS) * NSERV + i)); i=$((i + 1))
		start_server "$name" "$cmd" "$port" || continue
		taskset -c "$LOAD_CPU" "$LOADGEN" --port "$port" --conns 50 \
			--duration 0.3 >/dev/null 2>&1
		count_run "$name" "$port" 1
		count_run "$name" "$port" 50
		stop_server
	done
fi
echo "(measured in $(($(date +%s) - T0)) s)"
echo

# ---------------------------------------------------------------- report

FLOOR=${ECHO_SERVERS[0]%%:*}
EREF=${ECHO_SERVERS[1]%%:*}
HFLOOR=${HTTP_SERVERS[0]%%:*}
HREF=${HTTP_SERVERS[1]%%:*}

# A server that used well under a core was waiting for the load generator:
# its rate measures the client (or the neighbours), not the server.
client_bound() {
	awk -v p="$1" 'BEGIN { if (p + 0 < 80) printf "  [client-bound]" }'
}

fails() {
	local f
	f=$(count_of "$1" "$2" fail)
	[ "$f" -gt 0 ] && printf '  (%s of %s runs FAILED)' "$f" "$ROUNDS"
}

report_echo() { # scenario title
	local sc=$1 name rate p50 p99 cpu pct fr fc er ec
	local frate fcpu erate ecpu
	has "$sc" || return
	echo "== $2 =="
	printf '%-10s %10s %7s %8s %9s %11s %5s   %-21s %-21s\n' server "msgs/s" spread "p50 us" "p99 us" \
		"CPU ns/msg" "CPU%" "vs $FLOOR: rate, CPU" "vs $EREF: rate, CPU"
	frate=$(median "$sc" "$FLOOR" rate); fcpu=$(median "$sc" "$FLOOR" cpu_per)
	erate=$(median "$sc" "$EREF" rate); ecpu=$(median "$sc" "$EREF" cpu_per)
	for e in "${ECHO_SERVERS[@]}"; do
		name=${e%%:*}
		rate=$(median "$sc" "$name" rate)
		if [ -z "$rate" ]; then
			printf '%-10s %s%s\n' "$name" "no result" "$(fails "$sc" "$name")"
			continue
		fi
		p50=$(median "$sc" "$name" p50); p99=$(median "$sc" "$name" p99)
		cpu=$(median "$sc" "$name" cpu_per); pct=$(median "$sc" "$name" cpu_pct)
		fr=$(ratio "$rate" "$frate"); fc=$(ratio "$cpu" "$fcpu")
		er=$(ratio "$rate" "$erate"); ec=$(ratio "$cpu" "$ecpu")
		printf '%-10s %10.0f %7s %8.1f %9.1f %11.0f %5.0f   %-21s %-21s%s%s\n' "$name" "$rate" \
			"$(spread "$sc" "$name" rate)" "$p50" "$p99" "$cpu" "$pct" "$fr, $fc" "$er, $ec" \
			"$(fails "$sc" "$name")" "$(client_bound "$pct")"
	done
	echo
}

report_bulk() {
	local name g cpu pct fg fc eg ec
	has bulk || return
	echo "== bulk: one connection streams 64 KiB messages (2 MiB window), echo read back and verified =="
	printf '%-10s %8s %7s %14s %5s   %-21s %-21s\n' server "GB/s" spread "CPU us/MB" "CPU%" \
		"vs $FLOOR: GB/s, CPU" "vs $EREF: GB/s, CPU"
	fg=$(median bulk "$FLOOR" gbps); fc=$(median bulk "$FLOOR" cpu_mb)
	eg=$(median bulk "$EREF" gbps); ec=$(median bulk "$EREF" cpu_mb)
	for e in "${ECHO_SERVERS[@]}"; do
		name=${e%%:*}
		g=$(median bulk "$name" gbps)
		if [ -z "$g" ]; then
			printf '%-10s %s%s\n' "$name" "no result" "$(fails bulk "$name")"
			continue
		fi
		cpu=$(median bulk "$name" cpu_mb); pct=$(median bulk "$name" cpu_pct)
		printf '%-10s %8.3f %7s %14.1f %5.0f   %-21s %-21s%s%s\n' "$name" "$g" \
			"$(spread bulk "$name" gbps)" "$cpu" "$pct" \
			"$(ratio "$g" "$fg"), $(ratio "$cpu" "$fc")" \
			"$(ratio "$g" "$eg"), $(ratio "$cpu" "$ec")" "$(fails bulk "$name")" \
			"$(client_bound "$pct")"
	done
	echo
}

report_relay() {
	local name g cpu pct fg fc eg ec up
	has relay || return
	echo "== relay: the bulk stream through bench/relay (coil_channel_relay both ways) to a uring_echo upstream, beside the plain bulk echo =="
	printf '%-11s %8s %7s %14s %5s   %-21s %-21s %s\n' server "GB/s" spread "CPU us/MB" "CPU%" \
		"vs $FLOOR: GB/s, CPU" "vs coil: GB/s, CPU" "upstream CPU%"
	fg=$(median relay "$FLOOR" gbps); fc=$(median relay "$FLOOR" cpu_mb)
	eg=$(median relay coil gbps); ec=$(median relay coil cpu_mb)
	for e in "${RELAY_SERVERS[@]}"; do
		name=${e%%:*}
		g=$(median relay "$name" gbps)
		if [ -z "$g" ]; then
			printf '%-11s %s%s\n' "$name" "no result" "$(fails relay "$name")"
			continue
		fi
		cpu=$(median relay "$name" cpu_mb); pct=$(median relay "$name" cpu_pct)
		up=$(median relay "$name" up_pct)
		printf '%-11s %8.3f %7s %14.1f %5.0f   %-21s %-21s %s%s%s\n' "$name" "$g" \
			"$(spread relay "$name" gbps)" "$cpu" "$pct" \
			"$(ratio "$g" "$fg"), $(ratio "$cpu" "$fc")" \
			"$(ratio "$g" "$eg"), $(ratio "$cpu" "$ec")" "${up:--}" "$(fails relay "$name")" \
			"$(client_bound "$pct")"
	done
	printf 'coil_relay vs uring_relay (the floor relay): GB/s %s, CPU per MB %s\n' \
		"$(ratio "$(median relay coil_relay gbps)" "$(median relay uring_relay gbps)")" \
		"$(ratio "$(median relay coil_relay cpu_mb)" "$(median relay uring_relay cpu_mb)")"
	echo "(CPU = the relay process only; an MB counts once though a relay receives and sends it twice:"
	echo " client -> upstream and back. The upstream runs on CPU $UPSTREAM_CPU beside the load generator.)"
	echo
}

report_http() {
	local name rate p50 p99 cpu pct fr fc er ec
	has http || return
	echo "== HTTP keep-alive: wrk -t1 -c100 -d${DUR}s http://127.0.0.1:P/hello (200 \"hello\\n\") =="
	printf '%-10s %10s %7s %8s %9s %11s %5s   %-21s %-21s\n' server "req/s" spread "p50 us" "p99 us" \
		"CPU ns/req" "CPU%" "vs $HFLOOR: rate, CPU" "vs $HREF: rate, CPU"
	fr=$(median http "$HFLOOR" rate); fc=$(median http "$HFLOOR" cpu_per)
	er=$(median http "$HREF" rate); ec=$(median http "$HREF" cpu_per)
	for e in "${HTTP_SERVERS[@]}"; do
		name=${e%%:*}
		rate=$(median http "$name" rate)
		if [ -z "$rate" ]; then
			printf '%-10s %s%s\n' "$name" "no result" "$(fails http "$name")"
			continue
		fi
		p50=$(median http "$name" p50); p99=$(median http "$name" p99)
		cpu=$(median http "$name" cpu_per); pct=$(median http "$name" cpu_pct)
		printf '%-10s %10.0f %7s %8.1f %9.1f %11.0f %5.0f   %-21s %-21s%s%s\n' "$name" "$rate" \
			"$(spread http "$name" rate)" "$p50" "$p99" "$cpu" "$pct" \
			"$(ratio "$rate" "$fr"), $(ratio "$cpu" "$fc")" \
			"$(ratio "$rate" "$er"), $(ratio "$cpu" "$ec")" "$(fails http "$name")" \
			"$([ "$(count_of http "$name" errors)" -gt 0 ] && echo '  (wrk saw errors)')$(client_bound "$pct")"
	done
	echo
}

report_mem() {
	local name pc r0 r1 fp ep
	has mem || return
	echo "== memory: server RSS growth with $IDLE_CONNS idle connections (each echoed one 16-byte ping) =="
	printf '%-10s %12s %12s %14s   %-10s %-10s\n' server "RSS before" "RSS after" "bytes/conn" \
		"vs $FLOOR" "vs $EREF"
	fp=$(median mem "$FLOOR" per_conn); ep=$(median mem "$EREF" per_conn)
	for e in "${ECHO_SERVERS[@]}"; do
		name=${e%%:*}
		pc=$(median mem "$name" per_conn)
		if [ -z "$pc" ]; then
			printf '%-10s %s%s\n' "$name" "no result" "$(fails mem "$name")"
			continue
		fi
		r0=$(median mem "$name" rss0); r1=$(median mem "$name" rss1)
		printf '%-10s %9s kB %9s kB %14s   %-10s %-10s\n' "$name" "$r0" "$r1" "$pc" \
			"$(ratio "$pc" "$fp")" "$(ratio "$pc" "$ep")"
	done
	echo
}

report_counts() {
	local name c
	has counts || return
	echo "== syscalls per echoed 64 B message ($(count_method) on the server's threads, $COUNT_MSGS messages, exact counts) =="
	printf '%-10s %22s %22s %22s %22s\n' server "io_uring_enter, 1 conn" "all syscalls, 1 conn" \
		"io_uring_enter, 50" "all syscalls, 50"
	for e in "${ECHO_SERVERS[@]}"; do
		name=${e%%:*}
		[ -n "$(median counts1 "$name" sys_per)" ] || { printf '%-10s no result\n' "$name"; continue; }
		printf '%-10s %22s %22s %22s %22s\n' "$name" \
			"$(median counts1 "$name" enter_per)" "$(median counts1 "$name" sys_per)" \
			"$(median counts50 "$name" enter_per)" "$(median counts50 "$name" sys_per)"
	done
	echo
}

report_allocs() {
	has allocs || return
	echo "== heap allocations per message (bench/allocs: coil__alloc_total(), exact) =="
	if [ -x "$B/bench/allocs" ]; then
		"$B/bench/allocs" 20000 || echo "  allocs FAILED"
	else
		echo "  $B/bench/allocs not built"
	fi
	echo
}

report_enter() {
	has enter || return
	echo "== io_uring_enter with and without a registered ring fd (bench/enter) =="
	if [ -x "$B/bench/enter" ]; then
		taskset -c "$SERVER_CPU" "$B/bench/enter" 500000 || echo "  enter FAILED"
	else
		echo "  $B/bench/enter not built"
	fi
	echo
}

report_fairness() {
	has fairness || return
	echo "== fairness: a 10 ms timer on a worker saturated by a self-re-posting task (bench/fairness) =="
	if [ -x "$B/bench/fairness" ]; then
		taskset -c "$SERVER_CPU" "$B/bench/fairness" 21 || echo "  fairness FAILED"
	else
		echo "  $B/bench/fairness not built"
	fi
	echo
}

report_echo echo1 "echo 64 B ping-pong, 1 connection (latency-bound)"
report_echo echo50 "echo 64 B ping-pong, 50 connections"
report_echo echo500 "echo 64 B ping-pong, 500 connections"
report_echo echo4k "echo 4 KiB messages, 4 in flight per connection, 50 connections"
report_bulk
report_relay
report_http
report_mem
report_counts
report_allocs
report_fairness
report_enter

echo "How to read: rate ratio = server / reference (above 1 is faster); CPU ratio = server CPU per"
echo "message, request or MB / reference (below 1 is cheaper). CPU = utime+stime of the server"
echo "process (and its children) from /proc over the measured window; CPU% = share of one core;"
echo "spread = (max - min) / median of the rate over the rounds (large = noisy machine)."
echo "[client-bound]: the server used under 80 % of its core, so its rate is the load generator's."
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$(awk '$3 == "fail"' "$RES")" ]; then
	echo "some runs FAILED (see above): a verification error is a real bug in that server"
	exit 1
fi
exit 0
