/* The tools' password prompt (tools/password.c). */
#ifndef TERN_TOOLS_PASSWORD_H
#define TERN_TOOLS_PASSWORD_H

#include <stddef.h>

/* One line from stdin into buf, without its line end; no echo on a tty.
 * Returns 0, or -1 when nothing (or an empty line) was read. */
int tern_tool_read_password(char *buf, size_t size);

#endif
