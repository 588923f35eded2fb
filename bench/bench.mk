# SPDX-License-Identifier: MIT
# bench/bench.mk - the benchmark harness and baseline servers; included by the
# top-level Makefile (which provides B, CC, OPT, SAN, CFLAGS, LDFLAGS).
#
#   make bench             deps, build, run bench/run.sh, copy to build/bench-results.txt
#   make bench-build       only build the load generator and the baselines
#   ROUNDS=3 DUR=1 make bench   shorter run (see bench/README.md for all knobs)
#
# The baselines do not link coil: they build even while lib/ is in flux.

BENCH_CFLAGS := -std=gnu11 $(OPT) -g -Wall -Wextra -Werror -Wshadow \
	-Wstrict-prototypes -D_GNU_SOURCE $(SAN) $(CFLAGS)
BENCH_LDFLAGS := $(SAN) $(LDFLAGS)

# libuv is optional: its baseline is built only when pkg-config finds it.
BENCH_HAVE_UV := $(shell pkg-config --exists libuv 2>/dev/null && echo yes)

BENCH_BINS := $(B)/bench/loadgen $(B)/bench/epoll_echo $(B)/bench/uring_echo \
	$(B)/bench/epoll_http $(B)/bench/uring_http $(B)/bench/enter
ifeq ($(BENCH_HAVE_UV),yes)
BENCH_BINS += $(B)/bench/uv_echo
endif

.PHONY: bench-build

bench-build: $(BENCH_BINS)

$(B)/bench/loadgen: bench/loadgen.c
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDFLAGS) -lpthread

$(B)/bench/epoll_echo: bench/epoll_echo.c
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDFLAGS) -lpthread

$(B)/bench/epoll_http: bench/epoll_http.c
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDFLAGS) -lpthread

$(B)/bench/uring_echo: bench/uring_echo.c
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDFLAGS) -luring -lpthread

$(B)/bench/uring_http: bench/uring_http.c
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDFLAGS) -luring -lpthread

$(B)/bench/enter: bench/enter.c
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDFLAGS) -luring -lpthread

# Allocation counts per message: links libcoil.a for coil__alloc_total().
$(B)/bench/allocs: bench/allocs.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(ALL_LDFLAGS) $(LDLIBS_ALL)

# Timer lateness while the worker is saturated (links libcoil.a).
$(B)/bench/fairness: bench/fairness.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(ALL_LDFLAGS) $(LDLIBS_ALL)

# The relay (coil_channel_relay both ways) of the "relay" scenario.
$(B)/bench/relay: bench/relay.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(ALL_LDFLAGS) $(LDLIBS_ALL)

$(B)/bench/uv_echo: bench/uv_echo.c
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) $(shell pkg-config --cflags libuv) -o $@ $< \
		$(BENCH_LDFLAGS) $(shell pkg-config --libs libuv) -lpthread

# deps first, then a fresh make so that pkg-config sees a just-installed
# libuv; coil's own servers are built if the library builds, and run.sh
# skips them ("not built yet") if not. pipefail keeps run.sh's status.
bench:
	@sh scripts/deps.sh bench
	@$(MAKE) --no-print-directory bench-build
	@$(MAKE) --no-print-directory $(B)/examples/echo_server \
		$(B)/examples/http_echo $(B)/bench/allocs $(B)/bench/fairness $(B)/bench/relay >build/bench-coil-build.log 2>&1 || \
		echo "bench: coil's example servers did not build (see build/bench-coil-build.log); run.sh skips what is missing"
	@mkdir -p build
	@bash -o pipefail -c 'B=$(B) bash bench/run.sh | tee build/bench-results.txt'
	@if [ "$(TLS)" = 1 ]; then \
		bash -o pipefail -c 'B=$(B) bash bench/tls.sh | tee -a build/bench-results.txt'; \
	else echo "bench: built without TLS, bench/tls.sh skipped"; fi
