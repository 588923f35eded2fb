/* SPDX-License-Identifier: MIT */
/* The stress runs of test/stress.c at 5% size, so that `make test` and the
 * sanitizer builds exercise them on every run; `make stress` runs them at
 * full size. */
#define STRESS_DEFAULT_SCALE 0.05
#include "stress.c"
