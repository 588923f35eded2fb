#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs the Debian packages coil needs, showing apt's progress, or says
# exactly how to when not run as root.
# Usage: scripts/deps.sh [--list] [build|test|bench|fuzz|valgrind]...
#   --list   print the packages the sets need, one a line, and exit
#            (installs nothing)
#
# The clang runtime (sanitizers, libFuzzer) is the package matching the
# clang that is installed (libclang-rt-<major>-dev), not a pinned version.
set -e
export DEBIAN_FRONTEND=noninteractive
pkgs="liburing-dev libjemalloc-dev libcunit1-dev pkg-config make gcc"
want_clang_rt=0
list=0
if [ "${1:-}" = --list ]; then
	list=1
	shift
fi
for what in "$@"; do
	case "$what" in
	build) ;;
	# The peers the suite drives the examples with (curl, ab, h2load, wrk,
	# python3's http.client, socat, netcat), the compilers and tools of
	# the packaging checks, and man/groff to render the man pages.
	test) pkgs="$pkgs curl apache2-utils nghttp2-client wrk python3 socat"
	      pkgs="$pkgs netcat-openbsd clang g++ binutils man-db groff-base"
	      pkgs="$pkgs openssl libssl-dev"
	      want_clang_rt=1 ;;
	bench) pkgs="$pkgs wrk nginx-light curl libuv1-dev strace" ;;
	fuzz) pkgs="$pkgs clang"; want_clang_rt=1 ;;
	valgrind) pkgs="$pkgs valgrind" ;;
	*) echo "deps.sh: unknown set '$what' (build, test, bench, fuzz, valgrind)" >&2
	   exit 2 ;;
	esac
done

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

# The runtime package for the clang on PATH (or, before clang is installed,
# the one the clang package would bring). Empty when none is known.
clang_rt_pkg() {
	major=""
	if command -v clang >/dev/null 2>&1; then
		major=$(clang --version 2>/dev/null |
			sed -n 's/.*clang version \([0-9][0-9]*\).*/\1/p' | head -n 1)
	fi
	if [ -z "$major" ]; then
		major=$(apt-cache depends clang 2>/dev/null |
			sed -n 's/.*Depends: clang-\([0-9][0-9]*\)$/\1/p' | head -n 1)
	fi
	[ -n "$major" ] || return 0
	for p in "libclang-rt-$major-dev" "libclang-common-$major-dev"; do
		if installed "$p" || apt-cache show "$p" >/dev/null 2>&1; then
			echo "$p"
			return 0
		fi
	done
}

missing_of() {
	m=""
	for p in "$@"; do
		installed "$p" || m="$m $p"
	done
	echo "$m"
}

# apt-get with its output shown; the one debconf line that is noise on a
# machine without apt-utils is dropped. Returns apt-get's status.
apt_run() {
	st=$(mktemp)
	{ apt-get "$@"; echo $? >"$st"; } 2>&1 |
		grep -v '^debconf: delaying package configuration'
	rc=$(cat "$st")
	rm -f "$st"
	return "$rc"
}

install_missing() {
	missing=$(missing_of "$@")
	[ -n "$missing" ] || return 0
	n=$(echo $missing | wc -w)
	if [ "$(id -u)" != 0 ]; then
		echo "coil: $n Debian packages are missing:$missing" >&2
		echo "coil: run: sudo apt-get install -y$missing" >&2
		echo "coil: (or run this make command as root: it installs them)" >&2
		exit 1
	fi
	echo "coil: installing $n packages (a few minutes on a bare machine):$missing"
	if [ -z "$updated" ]; then
		echo "coil: apt-get update"
		apt_run update || echo "coil: apt-get update failed; trying the install anyway"
		updated=1
	fi
	# shellcheck disable=SC2086
	if ! apt_run install -y --no-install-recommends $missing; then
		echo "coil: apt-get install failed (see above); install by hand:" >&2
		echo "coil:   apt-get install -y$missing" >&2
		exit 1
	fi
	echo "coil: installed$missing"
}

if [ "$list" = 1 ]; then
	[ "$want_clang_rt" = 1 ] && pkgs="$pkgs $(clang_rt_pkg)"
	# shellcheck disable=SC2086
	printf '%s\n' $pkgs | sort -u
	exit 0
fi

updated=""
# shellcheck disable=SC2086
install_missing $pkgs
if [ "$want_clang_rt" = 1 ]; then
	rt=$(clang_rt_pkg)
	if [ -n "$rt" ]; then
		install_missing "$rt"
	else
		echo "coil: no clang runtime package found for $(command -v clang || echo clang); sanitizer and fuzz builds with clang may fail" >&2
	fi
fi
exit 0
