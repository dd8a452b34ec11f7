/* Pure IMAP command parsers (RFC 9051 / RFC 3501 grammar, RFC 7888
 * LITERAL+/LITERAL-): no I/O, every length and depth capped. Input: raw
 * client bytes, trusted in nothing. Two layers:
 *   - the command reader: bytes -> one complete command (its lines and the
 *     literal octets between them), resumable at any byte. When a line
 *     announces a synchronising literal it stops and hands the decision
 *     (send "+", or refuse) to the session, so an over-limit literal is
 *     refused before the client sends it; a non-synchronising one over the
 *     limit is skipped and reported.
 *   - argument parsers over a complete command: a tokenizer (atoms, quoted
 *     strings, literals, lists with a depth cap), sequence sets ('*', '$'),
 *     search keys into store.h's tern_search tree, fetch attributes
 *     (BODY[section]<partial>), flag lists, dates.
 * Slices point into the reader's buffer and are valid until the next feed. */
#ifndef TERN_IMAP_PARSER_H
#define TERN_IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "storage/store.h"

/* ---- the command reader ------------------------------------------------ */

typedef enum {
    TERN_IMAP_MORE = 0,      /* all input consumed, command not complete */
    TERN_IMAP_COMMAND,       /* a complete command: tern_imap_reader_command() */
    TERN_IMAP_LITERAL_SYNC,  /* a "{n}" line ended: the session must call accept
                                (and send "+ ...") or refuse before feeding more */
    TERN_IMAP_TOO_LONG,      /* a line past max_line: skipped to its end (and past a
                                literal it announced): reply BAD */
    TERN_IMAP_LITERAL_TOO_BIG, /* a non-synchronising literal past max_literal (or the
                                command total): its octets were skipped: reply BAD */
    TERN_IMAP_BAD_LITERAL,   /* LITERAL- literal over 4096 octets, or a malformed
                                literal announcement: skipped, reply BAD */
} tern_imap_status;

typedef struct tern_imap_reader {
    tern_buf cmd;            /* the command so far: lines (CRLF kept) and literal octets */
    size_t max_line;         /* per line, CRLF included */
    uint64_t max_literal;    /* per literal */
    uint64_t max_command;    /* lines and literals together */
    size_t line_start;       /* offset in cmd of the line being read */
    uint64_t lit_left;       /* literal octets still to read (or skip) */
    uint64_t lit_size;       /* the announced literal (for the session's decision) */
    bool lit_nonsync;
    bool in_literal;
    bool skipping;           /* skipping the rest of a refused command */
    bool skip_line;          /* skipping to the end of an over-long line */
    tern_imap_status skip_status; /* what to report when the skip ends */
    bool waiting;            /* LITERAL_SYNC returned, no decision yet */
    bool done;               /* a command or error was reported: the next feed starts afresh */
    char tail[24];           /* the last bytes of a skipped line: a literal it announces */
    size_t tail_len;
    char tag[64];            /* the first command line's tag, for replies to a skipped command */
    size_t tag_len;
} tern_imap_reader;

void tern_imap_reader_init(tern_imap_reader *r, size_t max_line, uint64_t max_literal,
                           uint64_t max_command);
void tern_imap_reader_free(tern_imap_reader *r);
/* Consumes input up to the next event; returns the bytes consumed. */
size_t tern_imap_reader_feed(tern_imap_reader *r, const uint8_t *data, size_t len,
                             tern_imap_status *status);
/* After LITERAL_SYNC: the literal's announced size. */
uint64_t tern_imap_reader_literal_size(const tern_imap_reader *r);
/* After LITERAL_SYNC: read the literal (the session sends "+ "). */
void tern_imap_reader_accept(tern_imap_reader *r);
/* After LITERAL_SYNC: the command ends here (the client sends no literal
 * after a tagged reply); the reader is ready for the next command. */
void tern_imap_reader_refuse(tern_imap_reader *r);
/* After COMMAND: the command bytes (without the final CRLF). Valid until the
 * next feed, which starts a new command. */
const uint8_t *tern_imap_reader_command(const tern_imap_reader *r, size_t *len_r);
/* The tag of the current (or just skipped) command, "*" when none was seen. */
const char *tern_imap_reader_tag(const tern_imap_reader *r, size_t *len_r);
/* Releases a large buffer between commands. */
void tern_imap_reader_shrink(tern_imap_reader *r);

/* ---- tokens ------------------------------------------------------------- */

typedef struct tern_imap_slice {
    const char *p;
    size_t len;
} tern_imap_slice;

typedef enum {
    TERN_IMAP_TOK_END = 0,   /* end of the command */
    TERN_IMAP_TOK_ATOM,      /* atom chars, also ']' and '\' where the grammar allows */
    TERN_IMAP_TOK_STRING,    /* quoted (unescaped into the arena) or literal */
    TERN_IMAP_TOK_LPAREN,
    TERN_IMAP_TOK_RPAREN,
    TERN_IMAP_TOK_ERROR,
} tern_imap_tok_kind;

typedef struct tern_imap_parser {
    const char *p, *end;
    tern_arena *arena;       /* unescaped strings, search trees, fetch items */
    unsigned depth, max_depth;
    bool literal8;           /* the last string was a ~{n} literal (APPEND binary) */
    const char *error;       /* why parsing failed (a short text for BAD) */
    bool depth_error;        /* the failure was the nesting cap */
} tern_imap_parser;

void tern_imap_parser_init(tern_imap_parser *ps, const uint8_t *cmd, size_t len,
                           tern_arena *arena, unsigned max_depth);
bool tern_imap_at_end(const tern_imap_parser *ps);
/* Exactly one SP. */
bool tern_imap_sp(tern_imap_parser *ps);
/* An atom (ATOM-CHAR run); `extra` lists more allowed chars (e.g. "\\" or "]"). */
bool tern_imap_atom(tern_imap_parser *ps, tern_imap_slice *out, const char *extra);
/* astring: atom (with ']') or string. NUL-terminated copy in the arena. */
bool tern_imap_astring(tern_imap_parser *ps, char **out, size_t *len_r);
/* string: quoted or literal (also literal8 when allow8). */
bool tern_imap_string(tern_imap_parser *ps, char **out, size_t *len_r, bool allow8);
/* A literal (or literal8 when allow8) as a slice of the command, without a
 * copy: for APPEND's message. */
bool tern_imap_literal_slice(tern_imap_parser *ps, tern_imap_slice *out, bool allow8);
/* nstring: NIL or string (out NULL for NIL). */
bool tern_imap_nstring(tern_imap_parser *ps, char **out);
bool tern_imap_number(tern_imap_parser *ps, uint64_t *out, uint64_t max);
bool tern_imap_peek(const tern_imap_parser *ps, char c);
bool tern_imap_char(tern_imap_parser *ps, char c);
/* Case-insensitive keyword followed by SP, ')' or end. */
bool tern_imap_keyword(tern_imap_parser *ps, const char *kw);
bool tern_imap_open(tern_imap_parser *ps);   /* '(' with the depth cap */
bool tern_imap_close(tern_imap_parser *ps);  /* ')' */
bool tern_imap_fail(tern_imap_parser *ps, const char *why);

/* tag SP command-name: the start of every command. */
bool tern_imap_tag_command(tern_imap_parser *ps, tern_imap_slice *tag, tern_imap_slice *name);

/* ---- sequence sets -------------------------------------------------------- */

typedef struct tern_imap_seqset {
    tern_uid_range *ranges;  /* first <= last; '*' is UINT32_MAX */
    size_t n;
    bool saved;              /* '$': the last saved search result (RFC 5182) */
} tern_imap_seqset;

bool tern_imap_parse_seqset(tern_imap_parser *ps, tern_imap_seqset *out);

/* ---- flags ------------------------------------------------------------ */

typedef struct tern_imap_flags {
    unsigned flags;          /* TERN_FLAG_* */
    const char **keywords;
    size_t n_keywords;
    bool recent;             /* \Recent was named (search only) */
} tern_imap_flags;

/* A flag list "(...)" or, when bare_ok, a space-separated run of flags. */
bool tern_imap_flag_list(tern_imap_parser *ps, tern_imap_flags *out, bool bare_ok);
/* One flag; returns false (no error) when the next token is not a flag. */
bool tern_imap_flag(tern_imap_parser *ps, tern_imap_flags *out);

/* ---- dates --------------------------------------------------------------- */

/* date: d-MMM-yyyy, optionally quoted: the UTC day start, unix seconds. */
bool tern_imap_date(tern_imap_parser *ps, int64_t *out);
/* date-time: "dd-MMM-yyyy hh:mm:ss +zzzz": unix seconds. */
bool tern_imap_date_time(tern_imap_parser *ps, int64_t *out);

/* ---- search ------------------------------------------------------------ */

/* Turns a message-number set into UIDs (the session's view), and names the
 * saved result for '$'. Called during parsing; returns false to fail. */
typedef struct tern_imap_seqmap {
    bool (*msn_to_uids)(void *ctx, const tern_imap_seqset *msns, tern_arena *a,
                        tern_uid_set *out);
    bool (*saved_uids)(void *ctx, tern_arena *a, tern_uid_set *out);
    void *ctx;
    /* The UIDs that are \Recent for the session (SEARCH RECENT, NEW, OLD);
     * NULL: none are. */
    bool (*recent_uids)(void *ctx, tern_arena *a, tern_uid_set *out);
} tern_imap_seqmap;

/* Converts a UID set as parsed ('$' resolved through the map). */
bool tern_imap_uidset(tern_imap_parser *ps, const tern_imap_seqset *in,
                      const tern_imap_seqmap *map, tern_uid_set *out);

typedef struct tern_imap_search_opts {
    bool esearch;            /* RETURN (...) given */
    bool ret_min, ret_max, ret_all, ret_count, ret_save;
    char *charset;           /* NULL: none given */
    bool modseq;             /* a MODSEQ key was used (CONDSTORE answer) */
} tern_imap_search_opts;

/* [RETURN (...)] [CHARSET x] search-key+: one AND tree. */
bool tern_imap_search(tern_imap_parser *ps, const tern_imap_seqmap *map,
                      tern_imap_search_opts *opts, tern_search **out);

/* ---- fetch attributes --------------------------------------------------- */

/* search-key+ alone, to the end of the command (SORT and THREAD give their
 * charset before the keys, without the CHARSET keyword). */
bool tern_imap_search_keys(tern_imap_parser *ps, const tern_imap_seqmap *map,
                           tern_imap_search_opts *opts, tern_search **out);

/* ---- SORT (RFC 5256, RFC 5957) ----------------------------------------- */

typedef enum {
    TERN_IMAP_SORT_ARRIVAL = 1,
    TERN_IMAP_SORT_CC,
    TERN_IMAP_SORT_DATE,
    TERN_IMAP_SORT_FROM,
    TERN_IMAP_SORT_SIZE,
    TERN_IMAP_SORT_SUBJECT,
    TERN_IMAP_SORT_TO,
    TERN_IMAP_SORT_DISPLAYFROM,
    TERN_IMAP_SORT_DISPLAYTO,
} tern_imap_sort_key;

typedef struct tern_imap_sort_crit {
    tern_imap_sort_key key;
    bool reverse;
} tern_imap_sort_crit;

#define TERN_IMAP_SORT_MAX 16 /* criteria in one SORT; more is BAD */

/* "(" sort-criterion *(SP sort-criterion) ")": out has room for
 * TERN_IMAP_SORT_MAX. REVERSE applies to the key after it. */
bool tern_imap_sort_criteria(tern_imap_parser *ps, tern_imap_sort_crit *out, size_t *n_r);

typedef enum {
    TERN_IMAP_FA_UID = 0, TERN_IMAP_FA_FLAGS, TERN_IMAP_FA_INTERNALDATE,
    TERN_IMAP_FA_RFC822_SIZE, TERN_IMAP_FA_MODSEQ, TERN_IMAP_FA_ENVELOPE,
    TERN_IMAP_FA_BODYSTRUCTURE, TERN_IMAP_FA_BODY_STRUCT, /* BODY without [] */
    TERN_IMAP_FA_SECTION,    /* BODY[...], BODY.PEEK[...], BINARY[...], RFC822(.HEADER/.TEXT) */
    TERN_IMAP_FA_BINARY_SIZE,
    TERN_IMAP_FA_EMAILID, TERN_IMAP_FA_THREADID,
} tern_imap_fa_kind;

typedef enum {
    TERN_IMAP_SEC_ALL = 0,   /* [] */
    TERN_IMAP_SEC_HEADER, TERN_IMAP_SEC_HEADER_FIELDS, TERN_IMAP_SEC_HEADER_FIELDS_NOT,
    TERN_IMAP_SEC_TEXT, TERN_IMAP_SEC_MIME,
} tern_imap_sec_kind;

#define TERN_IMAP_MAX_PART_DEPTH 32

typedef struct tern_imap_fetch_att {
    tern_imap_fa_kind kind;
    tern_imap_sec_kind sec;
    uint32_t part[TERN_IMAP_MAX_PART_DEPTH]; /* 1.2.3 */
    size_t n_part;
    char **fields;           /* HEADER.FIELDS names */
    size_t n_fields;
    bool peek;               /* BODY.PEEK / RFC822.HEADER / BINARY.PEEK: no \Seen */
    bool binary;             /* BINARY[...] */
    bool has_partial;
    uint64_t partial_off, partial_len;
    int rfc822;              /* 0, 1 RFC822, 2 RFC822.HEADER, 3 RFC822.TEXT: the reply name */
    const char *name;        /* the item's name as echoed (arena) */
} tern_imap_fetch_att;

typedef struct tern_imap_fetch {
    tern_imap_fetch_att *atts;
    size_t n;
    bool changedsince;       /* (CHANGEDSINCE n) */
    uint64_t changedsince_modseq;
    bool vanished;           /* (VANISHED) with UID FETCH and QRESYNC */
} tern_imap_fetch;

/* fetch-att list or macro (ALL/FAST/FULL), then optional modifiers. */
bool tern_imap_fetch_atts(tern_imap_parser *ps, tern_imap_fetch *out);

/* ---- mailbox names (RFC 3501 5.1.3 modified UTF-7) ------------------------ */

/* UTF-8 -> modified UTF-7 and back; return false on bad input. Output in
 * the arena, NUL-terminated. */
bool tern_imap_mutf7_encode(const char *utf8, tern_arena *a, char **out);
bool tern_imap_mutf7_decode(const char *mutf7, tern_arena *a, char **out);

#endif
