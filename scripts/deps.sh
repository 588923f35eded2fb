#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs the Debian packages coil needs, or says exactly how to.
# Usage: scripts/deps.sh [build|test|bench|fuzz]...
set -e
pkgs="liburing-dev libjemalloc-dev libcunit1-dev pkg-config make gcc libssl-dev"
for what in "$@"; do
	case "$what" in
	build) ;;
	test) pkgs="$pkgs openssl curl socat netcat-openbsd clang libclang-rt-14-dev g++ binutils" ;;
	bench) pkgs="$pkgs wrk nginx-light curl libuv1-dev strace" ;;
	fuzz) pkgs="$pkgs clang libclang-rt-14-dev" ;;
	valgrind) pkgs="$pkgs valgrind" ;;
	esac
done
missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
	echo "coil: installing missing packages:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || true
	apt-get install -y -qq $missing >/dev/null
else
	echo "coil: missing Debian packages:$missing" >&2
	echo "coil: run: sudo apt-get install -y$missing" >&2
	exit 1
fi
