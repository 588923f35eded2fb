/* SPDX-License-Identifier: MIT */
/* The library's version at run time (coil/version.h has it at compile
 * time): a program built against one release and run with another can
 * tell. */
#include <coil.h>

const char *coil_version(void)
{
	return COIL_VERSION_STRING;
}

unsigned coil_version_number(void)
{
	return COIL_VERSION_HEX;
}
