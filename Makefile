# SPDX-License-Identifier: MIT
# coil - one Makefile for the library, examples, tests, benchmarks and install.
#
#   make            build libcoil.a, libcoil.so, examples and tests
#   make run        the HTTP echo example on 127.0.0.1:8080 (installs deps)
#   make test       the whole CUnit suite (installs deps)
#   make asan|tsan  the suite under ASan+UBSan / ThreadSanitizer
#   make bench      benchmarks against baselines, as ratios
#   make run PORT=9000 HOST=0.0.0.0   another address for it
#   make install    PREFIX=/usr/local DESTDIR=
#   make man        man pages from include/coil.h into build/man/man3

VERSION_MAJOR := $(shell sed -n 's/^\#define COIL_VERSION_MAJOR \([0-9]*\)/\1/p' include/coil/version.h)
VERSION_MINOR := $(shell sed -n 's/^\#define COIL_VERSION_MINOR \([0-9]*\)/\1/p' include/coil/version.h)
VERSION_PATCH := $(shell sed -n 's/^\#define COIL_VERSION_PATCH \([0-9]*\)/\1/p' include/coil/version.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
DESTDIR ?=

# VARIANT selects the build directory and flags: rel, asan, tsan, valgrind.
VARIANT ?= rel
B := build/$(VARIANT)

CC ?= cc
OPT ?= -O2
WARN := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wstrict-prototypes
CPPFLAGS_BASE := -D_GNU_SOURCE -Iinclude -Ilib
CFLAGS_BASE := -std=gnu11 $(OPT) -g -fPIC -fvisibility=hidden $(WARN)
LIBS := -luring -lpthread
JEMALLOC := -ljemalloc

ifeq ($(VARIANT),asan)
  SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  CPPFLAGS_BASE += -DCOIL_NO_JEMALLOC
  JEMALLOC :=
endif
ifeq ($(VARIANT),tsan)
  SAN := -fsanitize=thread -fno-omit-frame-pointer
  CPPFLAGS_BASE += -DCOIL_NO_JEMALLOC
  JEMALLOC :=
endif
ifeq ($(VARIANT),valgrind)
  CPPFLAGS_BASE += -DCOIL_NO_JEMALLOC
  JEMALLOC :=
endif

ALL_CPPFLAGS := $(CPPFLAGS_BASE) $(CPPFLAGS)
ALL_CFLAGS := $(CFLAGS_BASE) $(SAN) $(CFLAGS)
ALL_LDFLAGS := $(SAN) $(LDFLAGS)
LDLIBS_ALL := $(LIBS) $(JEMALLOC)

# TLS (lib/tls.c) with OpenSSL 3, found by pkg-config; `make TLS=0` builds
# without it (the coil_tls_* functions then fail with -ENOTSUP), in its own
# build directory.
TLS ?= $(shell pkg-config --exists 'openssl >= 3' 2>/dev/null && echo 1 || echo 0)
ifeq ($(TLS),1)
  ALL_CPPFLAGS += -DCOIL_HAVE_OPENSSL $(shell pkg-config --cflags openssl)
  LDLIBS_ALL += $(shell pkg-config --libs openssl)
else
  B := $(B)-notls
endif

LIB_SRCS := $(sort $(wildcard lib/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(B)/%.o)
STATIC := $(B)/libcoil.a
SONAME := libcoil.so.$(VERSION_MAJOR)
SHARED := $(B)/libcoil.so.$(VERSION)

EX_COMMON_SRCS := $(sort $(wildcard examples/common/*.c))
EX_COMMON_OBJS := $(EX_COMMON_SRCS:%.c=$(B)/%.o)
EX_SRCS := $(sort $(wildcard examples/*.c))
EX_BINS := $(EX_SRCS:%.c=$(B)/%)

TEST_SRCS := $(sort $(wildcard test/test_*.c))
TEST_BINS := $(TEST_SRCS:%.c=$(B)/%)
TEST_HELPERS := $(B)/test/helpers.o

.PHONY: all lib examples tests test run asan tsan valgrind bench micro-bench deps deps-test \
	test-suite valgrind-suite stress-run serve \
	install uninstall clean check-exports fuzz stress man check-man
.DEFAULT_GOAL := all
.SECONDARY:

all: lib examples tests man

lib: $(STATIC) $(B)/libcoil.so

$(B)/%.o: %.c $(wildcard include/*.h include/coil/*.h lib/*.h examples/common/*.h test/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) -Iexamples/common -Itest $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# What each object really included (test_stress.c includes stress.c).
-include $(wildcard $(B)/*/*.d $(B)/*/*/*.d)

$(STATIC): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

# lib/coil.map gives every export the version node COIL_0 (docs/api.md).
$(SHARED): $(LIB_OBJS) lib/coil.map
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--no-undefined \
	    -Wl,--version-script=lib/coil.map $(ALL_LDFLAGS) -o $@ $(LIB_OBJS) \
	    $(LDLIBS_ALL)

$(B)/libcoil.so: $(SHARED)
	ln -sf libcoil.so.$(VERSION) $(B)/$(SONAME)
	ln -sf $(SONAME) $@

examples: $(EX_BINS)

$(B)/examples/%: $(B)/examples/%.o $(EX_COMMON_OBJS) $(STATIC)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LDLIBS_ALL) -lm

tests: $(TEST_BINS)

$(B)/test/%: $(B)/test/%.o $(TEST_HELPERS) $(EX_COMMON_OBJS) $(STATIC)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ -lcunit $(LDLIBS_ALL) -lm

deps:
	@sh scripts/deps.sh build

deps-test:
	@sh scripts/deps.sh build test

# The whole suite. TESTS="loop inprogress" runs a subset; TEST_TIMEOUT is per
# program, in seconds. Each target that installs packages first runs the
# build in a new make: the build directory depends on what is installed
# (TLS when OpenSSL is there), so it is decided after the install.
TEST_TIMEOUT ?= 300
test: deps-test
	@$(MAKE) --no-print-directory test-suite

test-suite: all
	@sh scripts/runtests.sh $(B) $(TEST_TIMEOUT) $(TESTS)

asan:
	@$(MAKE) --no-print-directory VARIANT=asan test

# test/tsan.supp: interceptor calls from OpenSSL (not built with TSan).
tsan:
	@TSAN_OPTIONS="suppressions=$(CURDIR)/test/tsan.supp $$TSAN_OPTIONS" \
		$(MAKE) --no-print-directory VARIANT=tsan test

valgrind:
	@sh scripts/deps.sh build test valgrind
	@$(MAKE) --no-print-directory VARIANT=valgrind valgrind-suite

valgrind-suite: all
	@VALGRIND=1 sh scripts/runtests.sh $(B) $(TEST_TIMEOUT) $(TESTS)

# Stress and fault runs at full size (COIL_STRESS_SCALE=1; `make test` runs
# them at 5% as test_stress), then 1 GiB through a relay into a slow reader
# and (TLS builds) a 1 GiB TLS echo, then the TLS=0 build's test_tls.
STRESS_TIMEOUT ?= 1200
stress: deps-test
	@$(MAKE) --no-print-directory stress-run

stress-run: $(B)/test/stress $(B)/test/test_lifetime $(B)/test/test_tls
	@timeout -k 5 $(STRESS_TIMEOUT) $(B)/test/stress
	@COIL_RELAY_MB=1024 timeout -k 5 $(STRESS_TIMEOUT) $(B)/test/test_lifetime relay_slow_reader
	@if [ "$(TLS)" = 1 ]; then COIL_TLS_BULK_MB=1024 timeout -k 5 $(STRESS_TIMEOUT) \
		$(B)/test/test_tls bulk_echo; fi
	@$(MAKE) --no-print-directory TLS=0 VARIANT=$(VARIANT) build/$(VARIANT)-notls/test/test_tls
	@timeout -k 5 $(STRESS_TIMEOUT) build/$(VARIANT)-notls/test/test_tls

# make run HOST=0.0.0.0 PORT=9000; RUN_ARGS adds any http_echo option
# (`build/rel/examples/http_echo --help` lists them). The program prints
# its own banner once it listens, with the address it got.
HOST ?= 127.0.0.1
PORT ?= 8080
RUN_ARGS ?=
run: deps
	@$(MAKE) --no-print-directory serve

serve: $(B)/examples/http_echo
	@exec $(B)/examples/http_echo --host '$(HOST)' --port '$(PORT)' $(RUN_ARGS)

check-exports: $(B)/libcoil.so
	@sh scripts/check-exports.sh $(B)/libcoil.so

# Man pages, generated from include/coil.h at build time (scripts/gen-man.sh):
# one per contract comment, a .so link for every other name it documents.
MAN_STAMP := build/man/.stamp
$(MAN_STAMP): include/coil.h include/coil/version.h scripts/gen-man.sh
	@sh scripts/gen-man.sh include/coil.h build/man/man3
	@touch $@
man: $(MAN_STAMP)

check-man: $(MAN_STAMP) $(B)/libcoil.so
	@sh scripts/check-man.sh $(B)/libcoil.so build/man

# Regenerated every time: it depends on PREFIX, LIBDIR, INCDIR and TLS. A
# TLS build needs OpenSSL's libraries in static links (after coil's own).
ifeq ($(TLS),1)
  PC_REQUIRES_PRIVATE := Requires.private: openssl >= 3
else
  PC_REQUIRES_PRIVATE := \# built without TLS: no Requires.private
endif
.PHONY: coil.pc
coil.pc: coil.pc.in include/coil/version.h
	@sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCDIR@|$(INCDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@REQUIRES_PRIVATE@|$(PC_REQUIRES_PRIVATE)|' $< > $@

install: lib coil.pc man
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/coil \
	    $(DESTDIR)$(MANDIR)/man3
	install -m 644 include/coil.h $(DESTDIR)$(INCDIR)/coil.h
	install -m 644 include/coil/version.h $(DESTDIR)$(INCDIR)/coil/version.h
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/libcoil.a
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/libcoil.so.$(VERSION)
	ln -sf libcoil.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libcoil.so
	install -m 644 coil.pc $(DESTDIR)$(LIBDIR)/pkgconfig/coil.pc
	install -m 644 build/man/man3/*.3 $(DESTDIR)$(MANDIR)/man3/

uninstall:
	rm -f $(DESTDIR)$(INCDIR)/coil.h $(DESTDIR)$(INCDIR)/coil/version.h
	-rmdir $(DESTDIR)$(INCDIR)/coil 2>/dev/null
	rm -f $(DESTDIR)$(LIBDIR)/libcoil.a $(DESTDIR)$(LIBDIR)/libcoil.so \
	      $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libcoil.so.$(VERSION) \
	      $(DESTDIR)$(LIBDIR)/pkgconfig/coil.pc
	rm -f $(DESTDIR)$(MANDIR)/man3/coil_*.3 $(DESTDIR)$(MANDIR)/man3/coil.3

clean:
	rm -rf build coil.pc

# The core micro-benchmarks (bench/micro.c) run first in `make bench`.
$(B)/bench/micro: bench/micro.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(ALL_LDFLAGS) $(LDLIBS_ALL)

$(B)/bench/slowloris: bench/slowloris.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(ALL_LDFLAGS)

# Worker-to-worker wake-up, eventfd vs IORING_OP_MSG_RING (no coil).
$(B)/bench/wake: bench/wake.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -o $@ $< $(ALL_LDFLAGS) -luring -lpthread

micro-bench: $(B)/bench/micro $(B)/bench/wake
	@$(B)/bench/micro
	@$(B)/bench/wake

bench: micro-bench

-include bench/bench.mk
-include test/fuzz/fuzz.mk
