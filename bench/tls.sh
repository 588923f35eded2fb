#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench/tls.sh - HTTPS against coil's http_echo --cert/--key and nginx, with
# the same certificate (P-256, made here), TLS 1.3 and OpenSSL's default
# suites on both (the same libssl): keep-alive GET /hello (requests/s and
# server CPU per request) and new connections with "Connection: close" (the
# handshake rate), and bulk: one HTTPS download of BULK_MB MiB by curl
# (GB/s and server CPU per GiB; coil's side is bench/tls_bulk.c, built here
# against $B/libcoil.a; nginx serves a file of that size). Rounds alternate
# between the servers; medians; ratios coil/nginx. Needs wrk, curl, nginx
# (deps.sh bench) and the openssl command.
#
#   bash bench/tls.sh                     # ROUNDS=3 DUR=3 CONNS=50
#   ROUNDS=5 DUR=5 bash bench/tls.sh
#
# Knobs: B (build/rel), ROUNDS, DUR seconds per measurement, CONNS, PORT
# (19443), SERVER_CPU (0) and LOAD_CPU (1) for taskset, NGINX, BULK_MB (1024).
set -euo pipefail
B=${B:-build/rel}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-3}
CONNS=${CONNS:-50}
PORT=${PORT:-19443}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NGINX=${NGINX:-/usr/sbin/nginx}
BULK_MB=${BULK_MB:-1024}
HZ=$(getconf CLK_TCK)

for t in wrk openssl curl taskset; do
	command -v "$t" >/dev/null || { echo "tls.sh: $t missing" >&2; exit 1; }
done
[ -x "$NGINX" ] || { echo "tls.sh: $NGINX missing" >&2; exit 1; }
[ -x "$B/examples/http_echo" ] || { echo "tls.sh: build $B/examples/http_echo first" >&2; exit 1; }

TMP=$(mktemp -d)
SPID=
cleanup() {
	[ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 -subj /CN=localhost \
	-addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1

# The bulk server (coil) and the file nginx serves (sparse: reads cost no disk).
cc -O2 -g -D_GNU_SOURCE -Iinclude -o "$TMP/tls_bulk" bench/tls_bulk.c \
	"$B/libcoil.a" $(pkg-config --libs openssl) -luring -ljemalloc -lpthread
truncate -s "$((BULK_MB << 20))" "$TMP/big"
# nginx's worker may run as another user (root's master drops to nobody).
chmod 755 "$TMP"
chmod 644 "$TMP/big" "$TMP/cert.pem"

mkdir -p "$TMP/nginx/tmp"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $TMP/nginx/tmp/body;
	proxy_temp_path $TMP/nginx/tmp/proxy;
	fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
	uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
	scgi_temp_path $TMP/nginx/tmp/scgi;
	keepalive_requests 1000000;
	server {
		listen 127.0.0.1:$PORT ssl;
		ssl_certificate $TMP/cert.pem;
		ssl_certificate_key $TMP/key.pem;
		ssl_protocols TLSv1.3;
		location /hello { return 200 "hello\n"; }
		# Bulk: nginx reads the file into large buffers (no sendfile
		# under TLS), as coil writes 256 KiB pieces.
		location /big { alias $TMP/big; output_buffers 4 256k; }
	}
}
EOF

# utime+stime ticks of a process and its children (nginx's worker).
cpu_ticks() {
	local p t=0 v
	for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		v=$(awk '{ s = $0; sub(/^.*\) /, "", s); split(s, a, " ");
			   print a[12] + a[13] }' /proc/"$p"/stat 2>/dev/null) || continue
		t=$((t + ${v:-0}))
	done
	echo "$t"
}

start() { # name
	if [ "$1" = nginx ]; then
		taskset -c "$SERVER_CPU" "$NGINX" -e "$TMP/nginx/error.log" \
			-p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" &
	elif [ "${2:-}" = bulk ]; then
		taskset -c "$SERVER_CPU" "$TMP/tls_bulk" --port "$PORT" --threads 1 \
			--cert "$TMP/cert.pem" --key "$TMP/key.pem" \
			--bytes "$((BULK_MB << 20))" 2>"$TMP/coil.log" &
	else
		taskset -c "$SERVER_CPU" "$B/examples/http_echo" --host 127.0.0.1 \
			--port "$PORT" --threads 1 --cert "$TMP/cert.pem" \
			--key "$TMP/key.pem" 2>"$TMP/coil.log" &
	fi
	SPID=$!
	for _ in $(seq 1 200); do
		# (tls_bulk answers every path with the bulk body: probe the port)
		if [ "${2:-}" = bulk ] && [ "$1" = coil ]; then
			openssl s_client -connect "127.0.0.1:$PORT" </dev/null \
				>/dev/null 2>&1 && return 0
		else
			curl -sk --max-time 1 "https://127.0.0.1:$PORT/hello" \
				>/dev/null 2>&1 && return 0
		fi
		sleep 0.05
	done
	echo "tls.sh: $1 did not start" >&2
	exit 1
}

stop() {
	kill "$SPID" 2>/dev/null || true
	wait "$SPID" 2>/dev/null || true
	SPID=
}

# measure name mode -> "rps cpu_us_per_request"
measure() {
	local hdr=() out n t0 t1
	[ "$2" = close ] && hdr=(-H "Connection: close")
	t0=$(cpu_ticks "$SPID")
	out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" "${hdr[@]}" \
		"https://127.0.0.1:$PORT/hello")
	t1=$(cpu_ticks "$SPID")
	if grep -q "Non-2xx\|Socket errors.*[1-9]" <<<"$out" && [ "$2" = keep ]; then
		echo "tls.sh: $1: wrk reported errors:" >&2
		echo "$out" >&2
		exit 1
	fi
	n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
	awk -v n="$n" -v d="$DUR" -v c=$((t1 - t0)) -v hz="$HZ" \
		'BEGIN { printf "%.0f %.1f\n", n / d, n ? c / hz * 1e6 / n : 0 }'
}

# bulk name -> "GB/s cpu_ms_per_GiB"
measure_bulk() {
	local t0 t1 out
	t0=$(cpu_ticks "$SPID")
	out=$(taskset -c "$LOAD_CPU" curl -sk -o /dev/null \
		-w '%{size_download} %{time_total}' "https://127.0.0.1:$PORT/big")
	t1=$(cpu_ticks "$SPID")
	read -r size secs <<<"$out"
	if [ "$size" != "$((BULK_MB << 20))" ]; then
		echo "tls.sh: $1: bulk download got $size bytes" >&2
		exit 1
	fi
	awk -v n="$size" -v s="$secs" -v c=$((t1 - t0)) -v hz="$HZ" \
		'BEGIN { printf "%.3f %.0f\n", n / s / 1e9, c / hz * 1e3 / (n / 1073741824) }'
}

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

declare -A R
for mode in keep close; do
	for r in $(seq 1 "$ROUNDS"); do
		for s in coil nginx; do
			start "$s"
			read -r rps cpu < <(measure "$s" "$mode")
			stop
			R[$s.$mode.rps]+="$rps "
			R[$s.$mode.cpu]+="$cpu "
			echo "round $r $mode $s: $rps req/s, $cpu us CPU/request"
		done
	done
done

for r in $(seq 1 "$ROUNDS"); do
	for s in coil nginx; do
		start "$s" bulk
		read -r gbs cpu < <(measure_bulk "$s")
		stop
		R[$s.bulk.gbs]+="$gbs "
		R[$s.bulk.cpu]+="$cpu "
		echo "round $r bulk $s: $gbs GB/s, $cpu ms CPU/GiB"
	done
done

echo
echo "HTTPS /hello, TLS 1.3, P-256, $CONNS connections, server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU, medians of $ROUNDS x ${DUR}s"
for mode in keep close; do
	label=$([ "$mode" = keep ] && echo "keep-alive" || echo "handshake/conn")
	for s in coil nginx; do
		m_rps=$(tr ' ' '\n' <<<"${R[$s.$mode.rps]}" | grep . | median)
		m_cpu=$(tr ' ' '\n' <<<"${R[$s.$mode.cpu]}" | grep . | median)
		eval "${s}_rps=$m_rps ${s}_cpu=$m_cpu"
		printf '%-15s %-6s %9s req/s %7s us CPU/request\n' "$label" "$s" "$m_rps" "$m_cpu"
	done
	awk -v a="$coil_rps" -v b="$nginx_rps" -v c="$coil_cpu" -v d="$nginx_cpu" -v l="$label" \
		'BEGIN { printf "%-15s ratio  %9.2fx req/s %7.2fx CPU/request (coil/nginx)\n", l, a / b, c / d }'
done
for s in coil nginx; do
	m_gbs=$(tr ' ' '\n' <<<"${R[$s.bulk.gbs]}" | grep . | median)
	m_cpu=$(tr ' ' '\n' <<<"${R[$s.bulk.cpu]}" | grep . | median)
	eval "${s}_gbs=$m_gbs ${s}_bcpu=$m_cpu"
	printf '%-15s %-6s %9s GB/s  %7s ms CPU/GiB\n' "bulk ${BULK_MB}MiB" "$s" "$m_gbs" "$m_cpu"
done
awk -v a="$coil_gbs" -v b="$nginx_gbs" -v c="$coil_bcpu" -v d="$nginx_bcpu" \
	'BEGIN { printf "%-15s ratio  %9.2fx GB/s  %7.2fx CPU/GiB (coil/nginx; curl decrypts on one CPU)\n", "bulk", a / b, c / d }'
