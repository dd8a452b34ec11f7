/* The DATA reader and the header scanner. Input: the raw bytes a client
 * sends after "354", trusted in nothing; output: the un-stuffed message.
 *
 * The end of data is <CRLF>.<CRLF> made of real CRLF pairs and nothing
 * else (the start of DATA counts as after a CRLF). Every other spelling a
 * hop might take for the end ("\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n",
 * "\r\n.\r\r\n", ...) is message content here: a server that ends the data
 * earlier or later than the hop before it lets a client smuggle a second
 * message past that hop's checks (SMTP smuggling, SEC Consult 2023).
 *
 * Un-stuffing (RFC 5321 4.5.2) applies only to lines that start after a
 * real CRLF: their leading dot is removed, except when the dot is
 * followed directly by a bare LF or bare CR. There the dot is kept, so
 * that "<CRLF>.<LF>" stays a visible "." line rather than becoming an empty
 * line, which would move the header/body boundary of what we pass on.
 *
 * Reject mode (normalize=false): a bare CR or LF latches an error, and the
 * bytes pass through unchanged (the session refuses the message after the
 * final dot). Normalize mode: each bare CR or LF becomes CRLF in the output
 * and nothing is latched for it. In both, a bare CR or LF ends a line for
 * the line-length count but never starts a line where a dot is special. */
#include "protocols/smtp/smtp_parser.h"

enum {
    D_BOL = 0, /* at the start of a line that followed a real CRLF */
    D_TEXT,    /* inside a line, or at a start of line that is not special */
    D_CR,      /* after a CR, already written out */
    D_DOT,     /* after a dot at D_BOL; the dot is held back */
    D_DOT_CR,  /* after a dot and CR at D_BOL; both held back */
    D_END,
};

void tern_smtp_data_init(tern_smtp_data_reader *r, size_t max_line, bool normalize)
{
    r->max_line = max_line;
    r->normalize = normalize;
    r->state = D_BOL;
    r->line_len = 0;
    r->errors = 0;
    r->out_bytes = 0;
}

typedef struct {
    tern_smtp_data_reader *r;
    uint8_t *out;
    size_t o;
} emitter;

/* Writes a byte that normalisation added: the client did not send it, so
 * it does not count towards the line length. */
static void put_added(emitter *e, uint8_t c)
{
    e->out[e->o++] = c;
}

/* Writes one byte of the current line and counts it against the limit
 * (RFC 5321 4.5.3.1.6: text line incl. CRLF, minus the stuffed dot). */
static void put(emitter *e, uint8_t c)
{
    tern_smtp_data_reader *r = e->r;
    e->out[e->o++] = c;
    if (r->line_len < SIZE_MAX)
        r->line_len++;
    if (r->max_line != 0 && r->line_len > r->max_line)
        r->errors |= TERN_SMTP_DATA_ERR_LONG_LINE;
}

/* A CR not followed by LF: the CR itself is already written. */
static void bare_cr(emitter *e)
{
    tern_smtp_data_reader *r = e->r;
    if (r->normalize)
        put_added(e, '\n');
    else
        r->errors |= TERN_SMTP_DATA_ERR_BARE_CR;
    r->line_len = 0;
    r->state = D_TEXT;
}

/* One byte in the middle of a line (or at a non-special line start). */
static void text_byte(emitter *e, uint8_t c)
{
    tern_smtp_data_reader *r = e->r;
    if (c == '\r') {
        put(e, '\r');
        r->state = D_CR;
        return;
    }
    if (c == '\n') {
        if (r->normalize) {
            put_added(e, '\r');
            put(e, '\n');
        } else {
            r->errors |= TERN_SMTP_DATA_ERR_BARE_LF;
            put(e, '\n');
        }
        r->line_len = 0;
        r->state = D_TEXT;
        return;
    }
    if (c == 0)
        r->errors |= TERN_SMTP_DATA_ERR_NUL;
    put(e, c);
    r->state = D_TEXT;
}

static size_t held_back(int state)
{
    return state == D_DOT ? 1 : state == D_DOT_CR ? 2 : 0;
}

size_t tern_smtp_data_feed(tern_smtp_data_reader *r, const uint8_t *in, size_t len, uint8_t *out,
                           size_t out_cap, size_t *out_len_r, tern_smtp_data_status *status)
{
    emitter e = {r, out, 0};
    size_t i = 0;

    *status = TERN_SMTP_DATA_MORE;
    while (i < len && r->state != D_END) {
        /* One input byte writes at most the held-back bytes plus two.
         * With out_cap >= 2*len + 3 this never stops early; with less, we
         * stop short instead of overflowing and the caller feeds the rest. */
        if (out_cap - e.o < held_back(r->state) + 2)
            break;
        uint8_t c = in[i++];
        switch (r->state) {
        case D_BOL:
            if (c == '.')
                r->state = D_DOT;
            else
                text_byte(&e, c);
            break;
        case D_TEXT:
            text_byte(&e, c);
            break;
        case D_CR:
            if (c == '\n') {
                put(&e, '\n');
                r->line_len = 0;
                r->state = D_BOL;
            } else {
                bare_cr(&e);
                text_byte(&e, c);
            }
            break;
        case D_DOT:
            if (c == '\r')
                r->state = D_DOT_CR;
            else if (c == '\n') {
                put(&e, '.');
                text_byte(&e, c);
            } else
                text_byte(&e, c); /* the stuffed dot is dropped */
            break;
        case D_DOT_CR:
            if (c == '\n') {
                r->line_len = 0;
                r->state = D_END;
            } else {
                put(&e, '.');
                put(&e, '\r');
                bare_cr(&e);
                text_byte(&e, c);
            }
            break;
        default:
            break;
        }
    }
    if (r->state == D_END)
        *status = TERN_SMTP_DATA_END;
    r->out_bytes += e.o;
    *out_len_r = e.o;
    return i;
}

/* ---- header scanner ---------------------------------------------------- */

enum {
    H_BOL = 0, /* start of a header line */
    H_BOL_CR,  /* a CR at the start of a line: maybe the empty line */
    H_NAME,    /* matching one of the names below */
    H_WSP,     /* after the name, before ':' */
    H_LINE,    /* rest of a line */
};

/* The fields the session needs to know about: Received (loop detection),
 * Message-ID and Date (submission adds them when missing). Their first
 * letters differ, so the first byte picks the one candidate. */
static const char *const hdr_names[] = {"received", "message-id", "date"};
#define HDR_NAMES (sizeof(hdr_names) / sizeof(hdr_names[0]))

void tern_smtp_hdr_scan_init(tern_smtp_hdr_scan *h)
{
    h->state = H_BOL;
    h->done = false;
    h->received = 0;
    h->has_message_id = false;
    h->has_date = false;
    h->match = 0;
    h->which = 0;
    h->at_line_start = true;
}

void tern_smtp_hdr_scan_feed(tern_smtp_hdr_scan *h, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len && !h->done; i++) {
        uint8_t c = data[i];
        uint8_t lc = (c >= 'A' && c <= 'Z') ? (uint8_t)(c - 'A' + 'a') : c;
        bool again;
        do {
            again = false;
            switch (h->state) {
            case H_BOL:
                if (c == '\r')
                    h->state = H_BOL_CR;
                else if (c == '\n')
                    h->done = true;
                else {
                    h->state = H_LINE;
                    for (size_t k = 0; k < HDR_NAMES; k++)
                        if (lc == (uint8_t)hdr_names[k][0]) {
                            h->which = (int)k;
                            h->match = 1;
                            h->state = H_NAME;
                        }
                }
                break;
            case H_BOL_CR:
                if (c == '\n')
                    h->done = true;
                else {
                    h->state = H_LINE;
                    again = true;
                }
                break;
            case H_NAME:
                if (lc == (uint8_t)hdr_names[h->which][h->match]) {
                    if (hdr_names[h->which][++h->match] == '\0')
                        h->state = H_WSP;
                } else {
                    h->state = H_LINE;
                    again = true;
                }
                break;
            case H_WSP:
                if (c == ':') {
                    if (h->which == 0 && h->received < UINT32_MAX)
                        h->received++;
                    else if (h->which == 1)
                        h->has_message_id = true;
                    else if (h->which == 2)
                        h->has_date = true;
                    h->state = H_LINE;
                } else if (c != ' ' && c != '\t') {
                    h->state = H_LINE;
                    again = true;
                }
                break;
            default:
                if (c == '\n')
                    h->state = H_BOL;
                break;
            }
        } while (again);
        h->at_line_start = h->state == H_BOL;
    }
}
