/* Builds the RFC 3464 delivery status notification for failed remote
 * recipients (see queue_dsn.h). Input: our envelope, the original message
 * (whose header is copied, never parsed beyond finding its end) and the
 * diagnostics, which may quote a remote server: they are folded onto one
 * line and stripped of control characters before they go in a field. */
#include "server/queue_dsn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/util.h"

static void clean_line(char *out, size_t size, const char *in)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)(in ? in : ""); *p && o + 1 < size; p++)
        out[o++] = *p < 32 || *p == 127 ? ' ' : (char)*p;
    out[o] = '\0';
}

static size_t header_len(const uint8_t *msg, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (msg[i] == '\n' && msg[i + 1] == '\n')
            return i + 1;
        if (i + 3 < len && msg[i] == '\r' && msg[i + 1] == '\n' && msg[i + 2] == '\r' &&
            msg[i + 3] == '\n')
            return i + 2;
    }
    return len;
}

uint8_t *tern_dsn_build(const char *reporting_mta, const tern_envelope *env,
                        const tern_dsn_rcpt *rcpts, size_t n, const uint8_t *msg, size_t len,
                        size_t *len_r)
{
    tern_buf b;
    tern_buf_init(&b, 0);
    int err = 0;
    char boundary[64], date[64], uuid[TERN_UUID_LEN];
    tern_uuid(uuid);
    snprintf(boundary, sizeof(boundary), "=_tern_dsn_%s", uuid);
    tern_rfc5322_date(time(NULL), date, sizeof(date));
    char arrival[64];
    tern_rfc5322_date(env->received_at, arrival, sizeof(arrival));
    char sender[600];
    clean_line(sender, sizeof(sender), env->mail_from);
    err |= tern_buf_printf(&b,
                    "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
                    "To: <%s>\r\n"
                    "Subject: Undelivered Mail Returned to Sender\r\n"
                    "Date: %s\r\n"
                    "Message-ID: <%s@%s>\r\n"
                    "Auto-Submitted: auto-replied\r\n"
                    "MIME-Version: 1.0\r\n"
                    "Content-Type: multipart/report; report-type=delivery-status;\r\n"
                    "\tboundary=\"%s\"\r\n"
                    "\r\n"
                    "This is a MIME-encapsulated message.\r\n"
                    "\r\n"
                    "--%s\r\n"
                    "Content-Type: text/plain; charset=us-ascii\r\n"
                    "\r\n"
                    "This is the mail system at host %s.\r\n"
                    "\r\n"
                    "Your message could not be delivered to one or more recipients.\r\n"
                    "\r\n",
                    reporting_mta, sender, date, uuid, reporting_mta, boundary, boundary,
                    reporting_mta);
    for (size_t i = 0; i < n; i++) {
        char a[600], d[600];
        clean_line(a, sizeof(a), rcpts[i].addr);
        clean_line(d, sizeof(d), rcpts[i].diagnostic);
        if (rcpts[i].remote_mta) {
            char h[200];
            clean_line(h, sizeof(h), rcpts[i].remote_mta);
            err |= tern_buf_printf(&b, "<%s>: host %s said: %s\r\n", a, h, d);
        } else
            err |= tern_buf_printf(&b, "<%s>: %s\r\n", a, d);
    }
    err |= tern_buf_printf(&b,
                    "\r\n--%s\r\n"
                    "Content-Type: message/delivery-status\r\n"
                    "\r\n"
                    "Reporting-MTA: dns; %s\r\n",
                    boundary, reporting_mta);
    if (env->envid) {
        char e[300];
        clean_line(e, sizeof(e), env->envid);
        err |= tern_buf_printf(&b, "Original-Envelope-Id: %s\r\n", e);
    }
    err |= tern_buf_printf(&b, "Arrival-Date: %s\r\n", arrival);
    for (size_t i = 0; i < n; i++) {
        char a[600], d[600], st[16], o[600];
        clean_line(a, sizeof(a), rcpts[i].addr);
        clean_line(d, sizeof(d), rcpts[i].diagnostic);
        clean_line(st, sizeof(st), rcpts[i].status ? rcpts[i].status : "5.0.0");
        err |= tern_buf_printf(&b, "\r\nFinal-Recipient: rfc822; %s\r\n", a);
        if (rcpts[i].orcpt) {
            clean_line(o, sizeof(o), rcpts[i].orcpt);
            err |= tern_buf_printf(&b, "Original-Recipient: %s\r\n", o);
        }
        err |= tern_buf_printf(&b, "Action: failed\r\nStatus: %s\r\n", st);
        if (rcpts[i].remote_mta) {
            char h[200];
            clean_line(h, sizeof(h), rcpts[i].remote_mta);
            err |= tern_buf_printf(&b, "Remote-MTA: dns; %s\r\nDiagnostic-Code: smtp; %s\r\n", h,
                                   d);
        } else
            err |= tern_buf_printf(&b, "Diagnostic-Code: x-tern; %s\r\n", d);
    }
    bool full = env->ret == TERN_RET_FULL;
    size_t part = full ? len : header_len(msg, len);
    err |= tern_buf_printf(&b, "\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary,
                    full ? "message/rfc822" : "text/rfc822-headers");
    err |= tern_buf_append(&b, msg, part);
    if (part > 0 && msg[part - 1] != '\n')
        err |= tern_buf_append(&b, "\r\n", 2);
    err |= tern_buf_printf(&b, "\r\n--%s--\r\n", boundary);
    if (err != 0) {
        tern_buf_free(&b);
        return NULL;
    }
    *len_r = b.len;
    return b.data;
}
