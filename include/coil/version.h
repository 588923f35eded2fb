/* SPDX-License-Identifier: MIT */
/* coil version macros: the one place the version is written. */
#ifndef COIL_VERSION_H
#define COIL_VERSION_H

#define COIL_VERSION_MAJOR 0
#define COIL_VERSION_MINOR 1
#define COIL_VERSION_PATCH 0
#define COIL_VERSION_STRING "0.1.0"
#define COIL_VERSION_HEX \
	((COIL_VERSION_MAJOR << 16) | (COIL_VERSION_MINOR << 8) | COIL_VERSION_PATCH)

#endif
