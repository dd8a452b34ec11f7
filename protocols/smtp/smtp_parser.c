/* SMTP command line reader and verb table. Turns raw bytes from the network
 * into one command line at a time, resumably, so the session can feed
 * whatever the socket delivered (one byte or many pipelined commands).
 * Trusts nothing in the input: every line is capped at r->max bytes
 * including its end, and NUL or a bare CR inside a line is refused. The
 * only memory written is the caller's buffer of r->max bytes. */
#include "protocols/smtp/smtp_parser.h"

#include <string.h>

static const char *const verb_names[TERN_SMTP_CMD__COUNT] = {
    [TERN_SMTP_CMD_UNKNOWN] = "UNKNOWN",
    [TERN_SMTP_CMD_HELO] = "HELO",
    [TERN_SMTP_CMD_EHLO] = "EHLO",
    [TERN_SMTP_CMD_MAIL] = "MAIL",
    [TERN_SMTP_CMD_RCPT] = "RCPT",
    [TERN_SMTP_CMD_DATA] = "DATA",
    [TERN_SMTP_CMD_BDAT] = "BDAT",
    [TERN_SMTP_CMD_RSET] = "RSET",
    [TERN_SMTP_CMD_NOOP] = "NOOP",
    [TERN_SMTP_CMD_QUIT] = "QUIT",
    [TERN_SMTP_CMD_VRFY] = "VRFY",
    [TERN_SMTP_CMD_EXPN] = "EXPN",
    [TERN_SMTP_CMD_HELP] = "HELP",
    [TERN_SMTP_CMD_STARTTLS] = "STARTTLS",
    [TERN_SMTP_CMD_AUTH] = "AUTH",
};

const char *tern_smtp_verb_name(tern_smtp_verb v)
{
    if ((unsigned)v >= TERN_SMTP_CMD__COUNT)
        return "UNKNOWN";
    return verb_names[v];
}

static unsigned char ascii_upper(unsigned char c)
{
    return (c >= 'a' && c <= 'z') ? (unsigned char)(c - 'a' + 'A') : c;
}

static tern_smtp_verb verb_lookup(const char *p, size_t len)
{
    for (int v = TERN_SMTP_CMD_UNKNOWN + 1; v < TERN_SMTP_CMD__COUNT; v++) {
        const char *name = verb_names[v];
        if (strlen(name) != len)
            continue;
        size_t i = 0;
        while (i < len && ascii_upper((unsigned char)p[i]) == (unsigned char)name[i])
            i++;
        if (i == len)
            return (tern_smtp_verb)v;
    }
    return TERN_SMTP_CMD_UNKNOWN;
}

static void split_line(const char *p, size_t n, tern_smtp_cmd *cmd)
{
    size_t sp = 0;
    while (sp < n && p[sp] != ' ')
        sp++;
    cmd->name.p = p;
    cmd->name.len = sp;
    cmd->verb = verb_lookup(p, sp);

    size_t a = sp;
    while (a < n && p[a] == ' ')
        a++;
    size_t e = n;
    while (e > a && (p[e - 1] == ' ' || p[e - 1] == '\t'))
        e--;
    cmd->args.p = p + a;
    cmd->args.len = e - a;
}

void tern_smtp_line_init(tern_smtp_line_reader *r, char *buf, size_t max)
{
    r->buf = buf;
    r->max = max;
    r->len = 0;
    r->overflow = false;
    r->bad = false;
}

size_t tern_smtp_line_feed(tern_smtp_line_reader *r, const uint8_t *data, size_t len,
                           tern_smtp_cmd *cmd, tern_smtp_line_status *status)
{
    size_t i = 0;
    *status = TERN_SMTP_LINE_MORE;
    while (i < len) {
        uint8_t c = data[i++];
        if (c == '\n') {
            size_t n = r->len;
            bool overflow = r->overflow, bad = r->bad;
            /* Reset now: the slices handed out stay valid because the
             * buffer is only written again by the next feed. */
            r->len = 0;
            r->overflow = false;
            r->bad = false;
            if (overflow) {
                *status = TERN_SMTP_LINE_TOO_LONG;
                return i;
            }
            if (n > 0 && r->buf[n - 1] == '\r')
                n--;
            /* A CR anywhere else is a bare CR: refusing it keeps us from
             * disagreeing with another hop about where a line ends. */
            if (bad || memchr(r->buf, '\r', n) != NULL) {
                *status = TERN_SMTP_LINE_BAD_CHAR;
                return i;
            }
            split_line(r->buf, n, cmd);
            *status = TERN_SMTP_LINE_OK;
            return i;
        }
        if (c == 0)
            r->bad = true;
        if (r->overflow)
            continue;
        /* Keep room for the LF that must still come: a line is at most
         * r->max bytes including its end. */
        if (r->len + 1 >= r->max) {
            r->overflow = true;
            continue;
        }
        r->buf[r->len++] = (char)c;
    }
    return i;
}
