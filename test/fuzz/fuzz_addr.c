/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the address parser: any text, every flag mix, must
 * parse or fail with a message, never crash; numeric addresses must survive
 * a format -> parse round trip unchanged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 400)
		return 0;
	char text[401];
	memcpy(text, data, size);
	text[size] = 0; /* a NUL inside simply ends the string early */
	static const int flags[] = {0, COIL_ADDR_LISTEN, COIL_ADDR_IPV4,
				    COIL_ADDR_LISTEN | COIL_ADDR_IPV4,
				    COIL_ADDR_DGRAM};
	for (size_t f = 0; f < sizeof(flags) / sizeof(flags[0]); f++) {
		coil_addr_t a;
		int rc = coil_addr_parse(text, flags[f], &a);
		if (rc > 0)
			abort();
		if (rc < 0) {
			if (!a.error[0])
				abort(); /* every failure says why */
			continue;
		}
		if (a.kind != COIL_ADDR_INET && a.kind != COIL_ADDR_UNIX)
			abort();
		if (a.kind != COIL_ADDR_INET || !a.numeric)
			continue;
		char out[200];
		int n = coil_addr_format((struct sockaddr *)&a.ss, a.sslen, out,
					 sizeof(out));
		if (n <= 0 || (size_t)n >= sizeof(out))
			abort();
		coil_addr_t b;
		if (coil_addr_parse(out, flags[f] & ~COIL_ADDR_LISTEN, &b) ||
		    b.sslen != a.sslen || memcmp(&b.ss, &a.ss, a.sslen)) {
			fprintf(stderr, "round trip: '%s' -> '%s'\n", text, out);
			abort();
		}
	}
	return 0;
}
