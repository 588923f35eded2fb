/* SPDX-License-Identifier: MIT */
/* Packaging checks: exported symbols and their documentation, the soname,
 * the header from C++, make install / pkg-config / make uninstall, and the
 * complete programs in the Markdown documents. Each test shells out from the
 * repository root and skips itself (passing, with a note) when a tool it
 * needs is missing. */
#include "helpers.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The repository root (holds include/coil.h) and the build directory this
 * program belongs to (build/<variant>), both absolute. */
#define PBUF (PATH_MAX + 256)
static char g_root[PATH_MAX];
static char g_build[PATH_MAX + 16];
static const char *g_variant = "rel";
/* Compile/link flags matching the variant's libcoil.a (see the Makefile);
 * NULL when the variant is unknown: link steps are then skipped. */
static const char *g_san;
static const char *g_libs;
/* A TLS build's archive may need OpenSSL (the Makefile's pkg-config
 * --libs openssl). */
#ifdef COIL_HAVE_OPENSSL
#define TLS_LIBS " -lssl -lcrypto"
#else
#define TLS_LIBS ""
#endif
/* Set around commands that are expected to fail. */
static bool g_quiet;

#define SKIP(...)                                   \
	do {                                        \
		printf("\n  note: skipped: ");      \
		printf(__VA_ARGS__);                \
		printf("\n");                       \
		CU_PASS("skipped");                 \
		return;                             \
	} while (0)

/* Runs a shell command from the repository root, with make's variables
 * removed from the environment (so a `make asan` parent does not leak
 * VARIANT or its jobserver into the makes started here). Returns the exit
 * status, or -1 if the shell could not run or was killed. */
static int sh(const char *fmt, ...) COIL_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(cmd))
		return -1;
	char full[sizeof(cmd) + PATH_MAX + 128];
	snprintf(full, sizeof(full),
		 "cd '%s' && unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES "
		 "VARIANT; %s",
		 g_root, cmd);
	fflush(stdout);
	fflush(stderr);
	int rc = system(full);
	if (rc == -1 || !WIFEXITED(rc)) {
		printf("\n  command failed to run: %s\n", cmd);
		return -1;
	}
	if (WEXITSTATUS(rc) && !g_quiet)
		printf("\n  exit %d: %s\n", WEXITSTATUS(rc), cmd);
	return WEXITSTATUS(rc);
}

/* Runs a command and returns its first output line (without newline). */
static int capture(char *out, size_t n, const char *fmt, ...) COIL_PRINTF(3, 4);
static int capture(char *out, size_t n, const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	char full[sizeof(cmd) + PATH_MAX + 16];
	snprintf(full, sizeof(full), "cd '%s' && %s", g_root, cmd);
	out[0] = 0;
	FILE *p = popen(full, "r");
	if (!p)
		return -1;
	if (fgets(out, (int)n, p))
		out[strcspn(out, "\n")] = 0;
	char sink[256];
	while (fgets(sink, sizeof(sink), p))
		;
	int rc = pclose(p);
	return rc == -1 || !WIFEXITED(rc) ? -1 : WEXITSTATUS(rc);
}

static bool have(const char *tool)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	return system(cmd) == 0;
}

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static void make_tmp(char *dir, size_t n)
{
	const char *t = getenv("TMPDIR");
	snprintf(dir, n, "%s/coil-pkg.XXXXXX", t && *t ? t : "/tmp");
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
}

static void rm_tmp(const char *dir)
{
	char cmd[PBUF];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		printf("\n  could not remove %s\n", dir);
}

static bool write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return false;
	bool ok = fputs(text, f) >= 0;
	return fclose(f) == 0 && ok;
}

static void lib_path(char *buf, size_t n)
{
	snprintf(buf, n, "%s/libcoil.so", g_build);
}

/* (a) Only coil_* is exported, and every export has a ### heading in
 * docs/api.md; the scripts also reject a library that breaks the rules. */
static void test_exports_and_docs(void)
{
	if (!have("nm"))
		SKIP("nm (binutils) not installed");
	char lib[PBUF];
	lib_path(lib, sizeof(lib));
	CU_ASSERT_TRUE_FATAL(exists(lib));
	CU_ASSERT_EQUAL(sh("sh scripts/check-exports.sh '%s'", lib), 0);
	CU_ASSERT_EQUAL(sh("sh scripts/check-docs.sh '%s'", lib), 0);

	if (!have("cc"))
		SKIP("cc not installed: negative checks not run");
	char tmp[PATH_MAX];
	make_tmp(tmp, sizeof(tmp));
	char src[PBUF];
	snprintf(src, sizeof(src), "%s/bad.c", tmp);
	CU_ASSERT_TRUE_FATAL(write_file(
		src, "int coil_undocumented_fn(void) { return 0; }\n"
		     "int leaked_helper(void) { return 1; }\n"));
	CU_ASSERT_EQUAL_FATAL(sh("cc -shared -fPIC -o '%s/libbad.so' '%s'", tmp,
				 src), 0);
	g_quiet = true;
	CU_ASSERT_EQUAL(sh("sh scripts/check-exports.sh '%s/libbad.so' "
			   ">/dev/null 2>&1", tmp), 1);
	CU_ASSERT_EQUAL(sh("sh scripts/check-docs.sh '%s/libbad.so' "
			   ">/dev/null 2>&1", tmp), 1);
	g_quiet = false;
	/* Man pages (make builds them from coil.h): every export of this
	 * build has one and renders cleanly; an export without one fails. */
	if (have("man")) {
		CU_ASSERT_EQUAL(sh("sh scripts/check-man.sh '%s' build/man", lib), 0);
		g_quiet = true;
		CU_ASSERT_EQUAL(sh("sh scripts/check-man.sh '%s/libbad.so' "
				   "build/man >/dev/null 2>&1", tmp), 1);
		g_quiet = false;
	}
	rm_tmp(tmp);
}

/* (b) The soname carries the major version; the file names follow. */
static void test_soname(void)
{
	if (!have("readelf"))
		SKIP("readelf (binutils) not installed");
	char lib[PBUF], line[512], want[64];
	lib_path(lib, sizeof(lib));
	CU_ASSERT_TRUE_FATAL(exists(lib));
	CU_ASSERT_EQUAL(capture(line, sizeof(line),
				"readelf -d '%s' | grep SONAME", lib), 0);
	snprintf(want, sizeof(want), "[libcoil.so.%d]", COIL_VERSION_MAJOR);
	if (!strstr(line, want))
		printf("\n  SONAME line: '%s', want %s\n", line, want);
	CU_ASSERT_PTR_NOT_NULL(strstr(line, want));
	char p[PBUF];
	snprintf(p, sizeof(p), "%s/libcoil.so.%d", g_build, COIL_VERSION_MAJOR);
	CU_ASSERT_TRUE(exists(p));
	snprintf(p, sizeof(p), "%s/libcoil.so.%s", g_build, COIL_VERSION_STRING);
	CU_ASSERT_TRUE(exists(p));
}

static const char cxx_prog[] =
	"// coil.h from C++: compiled with -Wall -Werror, linked, run.\n"
	"#include <coil.h>\n"
	"#include <cerrno>\n"
	"#include <cstdio>\n"
	"static_assert(COIL_VERSION_HEX >= 0, \"version\");\n"
	"int main()\n"
	"{\n"
	"	coil_loop_opts_t o;\n"
	"	coil_loop_opts_init(&o);\n"
	"	o.workers = 1;\n"
	"	coil_loop_t *loop = nullptr;\n"
	"	int rc = coil_loop_new(&loop, &o);\n"
	"	if (rc) {\n"
	"		std::fprintf(stderr, \"coil_loop_new: %s\\n\",\n"
	"			     coil_strerror(rc));\n"
	"		return rc == -ENOSYS || rc == -EPERM ? 77 : 1;\n"
	"	}\n"
	"	coil_ip_t *ip = coil_sleep(loop, 1);\n"
	"	int ok = ip && coil_ip_wait(ip, 5000) == 0 &&\n"
	"		 coil_ip_state(ip) == COIL_IP_FINISHED;\n"
	"	coil_ip_unref(ip);\n"
	"	rc = coil_loop_free(loop);\n"
	"	std::printf(\"coil %s from C++: %s\\n\", COIL_VERSION_STRING,\n"
	"		    ok && !rc ? \"ok\" : \"FAILED\");\n"
	"	return ok && !rc ? 0 : 1;\n"
	"}\n";

/* (c) The header compiles as C++17 with -Wall -Werror, and a C++ program
 * links against libcoil.a and runs. */
static void test_cplusplus(void)
{
	if (!have("g++"))
		SKIP("g++ not installed");
	char tmp[PATH_MAX], src[PBUF];
	make_tmp(tmp, sizeof(tmp));
	snprintf(src, sizeof(src), "%s/prog.cpp", tmp);
	CU_ASSERT_TRUE_FATAL(write_file(src, cxx_prog));
	if (!g_san) {
		/* Unknown variant: the archive's flags are unknown, so only
		 * compile. */
		CU_ASSERT_EQUAL(sh("g++ -x c++ -std=c++17 -Wall -Werror -Iinclude "
				   "-c -o '%s/prog.o' '%s'", tmp, src), 0);
		rm_tmp(tmp);
		SKIP("variant '%s': linked C++ program not built", g_variant);
	}
	/* -x none: the archive after it is not C++ source. */
	int rc = sh("g++ -x c++ -std=c++17 -Wall -Werror -Iinclude %s -o "
		    "'%s/prog' '%s' -x none '%s/libcoil.a' %s",
		    g_san, tmp, src, g_build, g_libs);
	CU_ASSERT_EQUAL(rc, 0);
	if (rc == 0) {
		rc = sh("'%s/prog'", tmp);
		if (rc == 77) {
			rm_tmp(tmp);
			SKIP("io_uring unavailable here");
		}
		CU_ASSERT_EQUAL(rc, 0);
	}
	rm_tmp(tmp);
}

static const char pc_prog[] =
	"/* Built out of tree against an installed coil. */\n"
	"#include <coil.h>\n"
	"#include <errno.h>\n"
	"#include <stdio.h>\n"
	"#include <string.h>\n"
	"int main(void)\n"
	"{\n"
	"	coil_loop_opts_t o;\n"
	"	coil_loop_opts_init(&o);\n"
	"	o.workers = 1;\n"
	"	coil_loop_t *loop;\n"
	"	int rc = coil_loop_new(&loop, &o);\n"
	"	if (rc)\n"
	"		return rc == -ENOSYS || rc == -EPERM ? 77 : 1;\n"
	"	coil_ip_t *ip = coil_sleep(loop, 1);\n"
	"	int ok = ip && coil_ip_wait(ip, 5000) == 0 && !coil_ip_error(ip);\n"
	"	coil_ip_unref(ip);\n"
	"	ok = ok && coil_loop_free(loop) == 0;\n"
	"	/* The library at run time is the one compiled against. */\n"
	"	ok = ok && !strcmp(coil_version(), COIL_VERSION_STRING) &&\n"
	"	     coil_version_number() == COIL_VERSION_HEX;\n"
	"	printf(\"installed coil %s: %s\\n\", coil_version(),\n"
	"	       ok ? \"ok\" : \"FAILED\");\n"
	"	return ok ? 0 : 1;\n"
	"}\n";

/* (d) make install into a DESTDIR, pkg-config from there, a program built
 * out of tree (shared and static) runs; make uninstall removes every file. */
static void test_install_pkgconfig(void)
{
	if (!have("make") || !have("pkg-config") || !have("cc"))
		SKIP("make, pkg-config or cc not installed");
	char dest[PATH_MAX], work[PATH_MAX];
	make_tmp(dest, sizeof(dest));
	make_tmp(work, sizeof(work));
	/* Always the release build: an installed library has no sanitizer.
	 * -W coil.pc.in regenerates coil.pc, which the Makefile otherwise
	 * keeps from an earlier install with another PREFIX. */
	int rc = sh("make -s install PREFIX=/usr DESTDIR='%s' VARIANT=rel "
		    "-W coil.pc.in >/dev/null", dest);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	static const char *const files[] = {
		"usr/include/coil.h",        "usr/include/coil/version.h",
		"usr/lib/libcoil.a",         "usr/lib/libcoil.so",
		"usr/lib/pkgconfig/coil.pc", "usr/share/man/man3/coil_ip_then.3",
		"usr/share/man/man3/coil_ip_catch.3", NULL,
	};
	char p[PBUF];
	for (int i = 0; files[i]; i++) {
		snprintf(p, sizeof(p), "%s/%s", dest, files[i]);
		if (!exists(p))
			printf("\n  not installed: %s\n", files[i]);
		CU_ASSERT_TRUE(exists(p));
	}
	snprintf(p, sizeof(p), "%s/usr/lib/libcoil.so.%d", dest,
		 COIL_VERSION_MAJOR);
	CU_ASSERT_TRUE(exists(p));

	char env[3 * PBUF];
	snprintf(env, sizeof(env),
		 "PKG_CONFIG_SYSROOT_DIR='%s' PKG_CONFIG_PATH='%s/usr/lib/pkgconfig'",
		 dest, dest);
	char line[1024];
	CU_ASSERT_EQUAL(capture(line, sizeof(line),
				"%s pkg-config --modversion coil", env), 0);
	CU_ASSERT_STRING_EQUAL(line, COIL_VERSION_STRING);

	char src[PBUF];
	snprintf(src, sizeof(src), "%s/prog.c", work);
	CU_ASSERT_TRUE_FATAL(write_file(src, pc_prog));
	/* Shared: -lcoil finds libcoil.so in the DESTDIR. */
	rc = sh("cd '%s' && cc -Wall -Werror -o prog prog.c "
		"$(%s pkg-config --cflags --libs coil)", work, env);
	CU_ASSERT_EQUAL(rc, 0);
	if (rc == 0) {
		CU_ASSERT_EQUAL(sh("readelf -d '%s/prog' | grep -q "
				   "'NEEDED.*libcoil.so.%d'", work,
				   COIL_VERSION_MAJOR), 0);
		/* It records the symbol version it needs (lib/coil.map). */
		CU_ASSERT_EQUAL(sh("readelf -V '%s/prog' | grep -q 'Name: COIL_0'",
				   work), 0);
		rc = sh("LD_LIBRARY_PATH='%s/usr/lib' '%s/prog'", dest, work);
		if (rc == 77) {
			rm_tmp(dest);
			rm_tmp(work);
			SKIP("io_uring unavailable here");
		}
		CU_ASSERT_EQUAL(rc, 0);
	}
	/* Static: the archive plus pkg-config's --static private libraries. */
	rc = sh("cd '%s' && cc -Wall -Werror -o prog_static prog.c "
		"$(%s pkg-config --cflags coil) '%s/usr/lib/libcoil.a' "
		"$(%s pkg-config --libs --static coil | sed 's/-lcoil\\b//')",
		work, env, dest, env);
	CU_ASSERT_EQUAL(rc, 0);
	if (rc == 0) {
		g_quiet = true;
		CU_ASSERT_NOT_EQUAL(sh("readelf -d '%s/prog_static' | grep -q "
				       "'NEEDED.*libcoil'", work), 0);
		g_quiet = false;
		CU_ASSERT_EQUAL(sh("'%s/prog_static'", work), 0);
	}
	/* Fully static: -static and pkg-config --static alone (coil.pc's
	 * Libs.private must name everything, -lm included, in link order). */
	rc = sh("cd '%s' && cc -static -Wall -Werror -o prog_full prog.c "
		"$(%s pkg-config --cflags --libs --static coil) 2>link.log || "
		"{ cat link.log; exit 1; }", work, env);
	CU_ASSERT_EQUAL(rc, 0);
	if (rc == 0) {
		g_quiet = true;
		CU_ASSERT_NOT_EQUAL(sh("readelf -d '%s/prog_full' 2>/dev/null | "
				       "grep -q NEEDED", work), 0);
		g_quiet = false;
		CU_ASSERT_EQUAL(sh("'%s/prog_full'", work), 0);
	}
	/* The man pages: one for every export, each rendered by man -l
	 * without a warning, from where make install put them. */
	if (have("man") && have("nm")) {
		CU_ASSERT_EQUAL(sh("sh scripts/check-man.sh '%s/usr/lib/libcoil.so' "
				   "'%s/usr/share/man'", dest, dest), 0);
		CU_ASSERT_EQUAL(sh("n1=$(ls build/man/man3 | wc -l); "
				   "n2=$(ls '%s/usr/share/man/man3' | wc -l); "
				   "[ \"$n1\" -eq \"$n2\" ] && [ \"$n1\" -gt 100 ]",
				   dest), 0);
	} else {
		printf("\n  note: man or nm missing: installed man pages not checked\n");
	}

	rc = sh("make -s uninstall PREFIX=/usr DESTDIR='%s' >/dev/null", dest);
	CU_ASSERT_EQUAL(rc, 0);
	/* Directories may stay; no file or link may. */
	CU_ASSERT_EQUAL(capture(line, sizeof(line), "find '%s' ! -type d", dest),
			0);
	if (line[0])
		printf("\n  left behind by make uninstall: %s\n", line);
	CU_ASSERT_STRING_EQUAL(line, "");
	rm_tmp(dest);
	rm_tmp(work);
}

/* (e) Every ```c program block of README.md and docs/ compiles and links
 * against this build. */
static void test_doc_examples(void)
{
	static const char *const docs[] = {
		"README.md",         "CHANGELOG.md",       "docs/architecture.md",
		"docs/concepts.md",  "docs/inprogress.md", "docs/channel.md",
		"docs/guide.md",     "docs/api.md",        NULL,
	};
	char p[PBUF];
	for (int i = 0; docs[i]; i++) {
		snprintf(p, sizeof(p), "%s/%s", g_root, docs[i]);
		if (!exists(p))
			printf("\n  missing: %s\n", docs[i]);
		CU_ASSERT_TRUE(exists(p));
	}
	if (!have("cc"))
		SKIP("cc not installed");
	if (!g_san)
		SKIP("variant '%s': doc programs not linked", g_variant);
	char tmp[PATH_MAX], line[512];
	make_tmp(tmp, sizeof(tmp));
	/* The summary line is the last one: "N programs extracted in D, M
	 * compiled"; the script exits 1 if any failed (its output says why). */
	int rc = sh("EXAMPLE_CFLAGS='%s' EXAMPLE_LIBS='%s' sh "
		    "scripts/extract-doc-examples.sh -c -b '%s' -o '%s/ex' "
		    "> '%s/log' 2>&1; rc=$?; cat '%s/log'; exit $rc",
		    g_san, g_libs, g_build, tmp, tmp, tmp);
	CU_ASSERT_EQUAL(rc, 0);
	CU_ASSERT_EQUAL(capture(line, sizeof(line), "tail -n 1 '%s/log'", tmp),
			0);
	unsigned long n = 0, ok = 0;
	const char *c = strstr(line, ", ");
	n = strtoul(line, NULL, 10);
	if (c)
		ok = strtoul(c + 2, NULL, 10);
	/* The README's chained example at least. */
	CU_ASSERT_TRUE(n >= 1);
	CU_ASSERT_EQUAL(ok, n);
	rm_tmp(tmp);
}


/* Builds and runs one set of the documents' programs against an installed
 * coil: $1 = shared | static | full, $2 = prefix, $3 = directory holding
 * readme.c, server.c and client.c, $4 = a free TCP port. */
static const char doc_progs_sh[] =
	"set -u\n"
	"mode=$1; prefix=$2; dir=$3; port=$4\n"
	"export PKG_CONFIG_PATH=$prefix/lib/pkgconfig\n"
	"cd \"$dir\" || exit 1\n"
	"for src in readme server client; do\n"
	"  b=${src}_$mode\n"
	"  case $mode in\n"
	"  shared) cc -Wall -Werror -o $b $src.c $(pkg-config --cflags --libs coil) 2>$b.log ;;\n"
	"  static) cc -Wall -Werror -o $b $src.c $(pkg-config --cflags coil) \\\n"
	"            \"$prefix/lib/libcoil.a\" \\\n"
	"            $(pkg-config --libs --static coil | sed 's/-lcoil //') 2>$b.log ;;\n"
	"  full) cc -static -Wall -Werror -o $b $src.c \\\n"
	"          $(pkg-config --cflags --libs --static coil) 2>$b.log ;;\n"
	"  esac || { echo \"build of $b failed:\"; cat $b.log; exit 1; }\n"
	"done\n"
	"if [ $mode = shared ]; then\n"
	"  readelf -d readme_shared | grep -q 'NEEDED.*libcoil.so' || { echo 'readme_shared: no libcoil.so'; exit 1; }\n"
	"else\n"
	"  readelf -d readme_$mode | grep -q 'NEEDED.*libcoil' && { echo \"readme_$mode needs libcoil.so\"; exit 1; }\n"
	"fi\n"
	"if [ $mode = full ]; then\n"
	"  readelf -d readme_full 2>/dev/null | grep -q NEEDED && { echo 'readme_full is not static'; exit 1; }\n"
	"fi\n"
	"export LD_LIBRARY_PATH=$prefix/lib\n"
	"out=$(./readme_$mode) || { echo \"readme_$mode failed: $out\"; exit 1; }\n"
	"[ \"$out\" = 'read back 12 bytes: hello, coil' ] || { echo \"readme_$mode: '$out'\"; exit 1; }\n"
	"./server_$mode 127.0.0.1:$port >server_$mode.log 2>&1 &\n"
	"pid=$!\n"
	"i=0\n"
	"until grep -q 'echoing on' server_$mode.log; do\n"
	"  i=$((i + 1))\n"
	"  if [ $i -gt 1000 ] || ! kill -0 $pid 2>/dev/null; then\n"
	"    echo \"server_$mode did not start:\"; cat server_$mode.log; kill $pid; exit 1\n"
	"  fi\n"
	"  sleep 0.01\n"
	"done\n"
	"out=$(./client_$mode 127.0.0.1:$port 'hi there' 2>&1); rc=$?\n"
	"kill -TERM $pid; wait $pid; st=$?\n"
	"[ $rc = 0 ] && [ \"$out\" = 'reply: hi there' ] || { echo \"client_$mode: exit $rc, '$out'\"; exit 1; }\n"
	"[ $st = 0 ] || { echo \"server_$mode: exit $st after SIGTERM\"; exit 1; }\n"
	"echo \"$mode: README and guide programs built and ran\"\n";

static unsigned short free_tcp_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(sa);
	unsigned short port = 0;
	if (fd >= 0 && !bind(fd, (struct sockaddr *)&sa, sizeof(sa)) &&
	    !getsockname(fd, (struct sockaddr *)&sa, &l))
		port = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* (f) The README's program and the guide's echo server and client, built
 * with pkg-config against a coil installed into a temporary prefix (no
 * DESTDIR): shared, static coil, and fully static; each set runs (the
 * client talks to the server, which stops on SIGTERM with exit 0). */
static void test_doc_programs_installed(void)
{
	if (!have("make") || !have("pkg-config") || !have("cc") ||
	    !have("readelf"))
		SKIP("make, pkg-config, cc or readelf not installed");
	char prefix[PATH_MAX], work[PATH_MAX];
	make_tmp(prefix, sizeof(prefix));
	make_tmp(work, sizeof(work));
	int rc = sh("make -s install PREFIX='%s' VARIANT=rel -W coil.pc.in "
		    ">/dev/null", prefix);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	/* The programs, picked by what they print. */
	rc = sh("sh scripts/extract-doc-examples.sh -o '%s/ex' README.md "
		"docs/guide.md >/dev/null && cd '%s/ex' && "
		"cp $(grep -l 'read back' README_md_L*.c) ../readme.c && "
		"cp $(grep -l 'echoing on' docs_guide_md_L*.c) ../server.c && "
		"cp $(grep -l 'reply: ' docs_guide_md_L*.c) ../client.c",
		work, work);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	char script[PBUF];
	snprintf(script, sizeof(script), "%s/run.sh", work);
	CU_ASSERT_TRUE_FATAL(write_file(script, doc_progs_sh));
	static const char *const modes[] = {"shared", "static", "full", NULL};
	for (int i = 0; modes[i]; i++) {
		unsigned short port = free_tcp_port();
		rc = sh("sh '%s' %s '%s' '%s' %u", script, modes[i], prefix, work,
			port);
		if (rc)
			printf("\n  %s link: failed (output above)\n", modes[i]);
		CU_ASSERT_EQUAL(rc, 0);
	}
	rm_tmp(prefix);
	rm_tmp(work);
}


/* (g) What `make test` installs on a fresh machine: the peers the suite
 * drives the examples with, man/groff, and the clang runtime package of
 * the clang that is installed (not a pinned version). */
static void test_deps_lists(void)
{
	char line[512];
	static const char *const peers[] = {
		"curl", "apache2-utils", "nghttp2-client", "wrk", "python3",
		"man-db", "groff-base", "liburing-dev", "libcunit1-dev", NULL};
	for (int i = 0; peers[i]; i++) {
		int rc = capture(line, sizeof(line),
				 "sh scripts/deps.sh --list test | grep -x '%s'",
				 peers[i]);
		if (rc)
			printf("\n  deps.sh test lacks %s\n", peers[i]);
		CU_ASSERT_EQUAL(rc, 0);
	}
	g_quiet = true;
	CU_ASSERT_NOT_EQUAL(sh("sh scripts/deps.sh --list build | grep -q "
			       "'^curl$'"), 0);
	CU_ASSERT_EQUAL(sh("sh scripts/deps.sh bogus >/dev/null 2>&1"), 2);
	g_quiet = false;
	if (!have("clang"))
		SKIP("clang not installed: its runtime package not checked");
	char major[32];
	CU_ASSERT_EQUAL_FATAL(
		capture(major, sizeof(major),
			"clang --version | sed -n 's/.*clang version "
			"\\([0-9][0-9]*\\).*/\\1/p' | head -n 1"), 0);
	CU_ASSERT_FATAL(major[0] != 0);
	CU_ASSERT_EQUAL(capture(line, sizeof(line),
				"sh scripts/deps.sh --list test | grep "
				"'^libclang-\\(rt\\|common\\)-'"), 0);
	char want_rt[96], want_common[96];
	snprintf(want_rt, sizeof(want_rt), "libclang-rt-%s-dev", major);
	snprintf(want_common, sizeof(want_common), "libclang-common-%s-dev",
		 major);
	if (strcmp(line, want_rt) && strcmp(line, want_common))
		printf("\n  clang %s, runtime package listed: '%s'\n", major, line);
	CU_ASSERT(!strcmp(line, want_rt) || !strcmp(line, want_common));
}

/* Finds the repository root (walking up from the working directory) and
 * the build directory: $COIL_BUILD_DIR, else the directory this program was
 * built in (build/<variant>/test/test_packaging), else build/rel. */
static int locate(const char *argv0)
{
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof(cwd)))
		return -1;
	const char *env = getenv("COIL_BUILD_DIR");
	char build[PATH_MAX + 16] = "";
	if (env && *env) {
		if (!realpath(env, build))
			return -1;
	} else {
		char self[PATH_MAX];
		if (realpath(argv0, self)) {
			char *slash = strrchr(self, '/');
			if (slash && slash - self >= 5 &&
			    !strncmp(slash - 5, "/test", 5)) {
				slash[-5] = 0;
				snprintf(build, sizeof(build), "%s", self);
			}
		}
	}
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", cwd);
	for (;;) {
		char probe[PBUF];
		snprintf(probe, sizeof(probe), "%s/include/coil.h", dir);
		if (exists(probe))
			break;
		char *slash = strrchr(dir, '/');
		if (!slash || slash == dir)
			return -1;
		*slash = 0;
	}
	snprintf(g_root, sizeof(g_root), "%s", dir);
	if (!build[0])
		snprintf(build, sizeof(build), "%s/build/rel", g_root);
	snprintf(g_build, sizeof(g_build), "%s", build);
	const char *v = strrchr(g_build, '/');
	g_variant = v ? v + 1 : g_build;
	/* Keep in step with the Makefile's SAN and JEMALLOC per variant
	 * (build/<variant>-notls when built without OpenSSL). */
	static char base[PATH_MAX + 16];
	snprintf(base, sizeof(base), "%s", g_variant);
	char *dash = strstr(base, "-notls");
	if (dash && !dash[6])
		*dash = 0;
	g_variant = base;
	if (!strcmp(g_variant, "rel")) {
		g_san = "";
		g_libs = "-luring -ljemalloc -lpthread -lm" TLS_LIBS;
	} else if (!strcmp(g_variant, "asan")) {
		g_san = "-fsanitize=address,undefined -fno-omit-frame-pointer "
			"-fno-sanitize-recover=undefined";
		g_libs = "-luring -lpthread -lm" TLS_LIBS;
	} else if (!strcmp(g_variant, "tsan")) {
		g_san = "-fsanitize=thread -fno-omit-frame-pointer";
		g_libs = "-luring -lpthread -lm" TLS_LIBS;
	} else if (!strcmp(g_variant, "valgrind")) {
		g_san = "";
		g_libs = "-luring -lpthread -lm" TLS_LIBS;
	}
	return chdir(g_root);
}

static const coil_test_t tests[] = {
	{"exports_and_docs", test_exports_and_docs},
	{"soname", test_soname},
	{"cplusplus", test_cplusplus},
	{"install_pkgconfig", test_install_pkgconfig},
	{"doc_examples", test_doc_examples},
	{"doc_programs_installed", test_doc_programs_installed},
	{"deps_lists", test_deps_lists},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	if (locate(argv[0])) {
		fprintf(stderr, "test_packaging: cannot find the repository "
				"root (include/coil.h) above the working "
				"directory\n");
		return 1;
	}
	printf("test_packaging: root %s, build %s (variant %s)\n", g_root,
	       g_build, g_variant);
	return coil_test_main("packaging", tests, argc, argv);
}
