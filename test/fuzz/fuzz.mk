# SPDX-License-Identifier: MIT
# libFuzzer targets, included by the top-level Makefile.
#
#   make fuzz         build every test/fuzz/fuzz_<name>.c and run each for
#                     FUZZ_TIME seconds (default 60) on a scratch copy of its
#                     seed corpus test/fuzz/corpus/<name>/
#   make fuzz-smoke   the same for 5 seconds each
#   make fuzz-build   build only
#   FUZZ_TARGETS="readline http" limits both to some targets.
#
# A target is its fuzz_<name>.c plus the files listed in FUZZ_SRCS_<name>
# (and link flags in FUZZ_LIBS_<name>): add one line per target below.
# Binaries, logs, scratch corpora and crash artifacts go to build/fuzz/, so
# runs never grow the repository. Needs clang with libFuzzer (deps.sh fuzz).

FUZZ_SRCS_readline := lib/buf.c lib/alloc.c
FUZZ_SRCS_http := examples/common/http_parser.c
FUZZ_SRCS_addr := $(sort $(wildcard lib/*.c))
FUZZ_LIBS_addr := -luring -lpthread
# apiseq: random API sequences against the whole library (test/apiseq.c).
FUZZ_SRCS_apiseq := $(sort $(wildcard lib/*.c))
FUZZ_LIBS_apiseq := -luring -lpthread
# tls: the library with OpenSSL (the -D reaches every source of the line).
FUZZ_SRCS_tls := $(sort $(wildcard lib/*.c))
FUZZ_LIBS_tls := -DCOIL_HAVE_OPENSSL -luring -lpthread -lssl -lcrypto

FUZZ_CC ?= clang
FUZZ_TIME ?= 60
FUZZ_B := build/fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -fno-omit-frame-pointer \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -DCOIL_NO_JEMALLOC -Iinclude -Ilib -Iexamples/common \
	-Itest/fuzz $(WARN)
FUZZ_ALL := $(patsubst test/fuzz/fuzz_%.c,%,$(sort $(wildcard test/fuzz/fuzz_*.c)))
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_B)/fuzz_%)
FUZZ_HDRS := $(wildcard include/*.h include/coil/*.h lib/*.h examples/common/*.h \
	test/apiseq.c test/apiseq.h)

.PHONY: fuzz fuzz-smoke fuzz-build

# One rule per target (generated, so each sees its own FUZZ_SRCS_<name>).
define FUZZ_RULE
$(FUZZ_B)/fuzz_$(1): test/fuzz/fuzz_$(1).c $$(FUZZ_SRCS_$(1)) $(FUZZ_HDRS)
	@mkdir -p $(FUZZ_B)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $$@ $$< $$(FUZZ_SRCS_$(1)) $$(FUZZ_LIBS_$(1))
endef
$(foreach n,$(FUZZ_ALL),$(eval $(call FUZZ_RULE,$(n))))

fuzz-build: $(FUZZ_BINS)

# Each target runs on a fresh copy of its seed corpus (new inputs land in
# the copy); a crash stops the run, shows the log's tail and leaves the
# reproducer in build/fuzz/artifacts-<name>/ (rerun: build/fuzz/fuzz_<name>
# <file>). The last line per target is the executions libFuzzer reports.
fuzz:
	@sh scripts/deps.sh fuzz
	@$(MAKE) --no-print-directory fuzz-build
	@set -e; for n in $(FUZZ_TARGETS); do \
		work=$(FUZZ_B)/corpus-$$n; art=$(FUZZ_B)/artifacts-$$n/; \
		log=$(FUZZ_B)/fuzz_$$n.log; \
		rm -rf $$work; mkdir -p $$work $$art; \
		if [ -d test/fuzz/corpus/$$n ]; then \
			cp -R test/fuzz/corpus/$$n/. $$work/; fi; \
		echo "coil-fuzz: $$n for $(FUZZ_TIME)s"; \
		if ! $(FUZZ_B)/fuzz_$$n -max_total_time=$(FUZZ_TIME) \
			-timeout=10 -print_final_stats=1 \
			-artifact_prefix=$$art $$work >$$log 2>&1; then \
			tail -n 40 $$log; \
			echo "coil-fuzz: $$n FAILED (log $$log, input in $$art)"; \
			exit 1; \
		fi; \
		execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
		cov=$$(grep -o 'cov: [0-9]*' $$log | tail -n 1); \
		echo "coil-fuzz: $$n ok, $$execs executions, $$cov, corpus $$(ls $$work | wc -l) inputs"; \
	done

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_TIME=5
