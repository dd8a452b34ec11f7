/* Helpers shared by the builtin matchers: reading the condition, comma and
 * '+' lists, counts and sizes, PCRE2 regexes compiled once at init, and
 * network lists for the RemoteAddr* matchers. Input: the condition text
 * from the config (checked here, every problem a one-line init error) and,
 * at match time, the mail's untrusted addresses and header values. */
#ifndef TERN_MAILETS_MATCHER_UTIL_H
#define TERN_MAILETS_MATCHER_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/net.h"
#include "mailets/builtin/builtin.h"

/* A regex that could blow up (nested quantifiers on a hostile header)
 * gives up after this many backtracking steps; the matcher then cannot
 * decide and the step's on_error applies. */
#define TERN_MATCHER_REGEX_MATCH_LIMIT 100000u
#define TERN_MATCHER_REGEX_DEPTH_LIMIT 1000u
/* Bounds on what a condition may list. */
#define TERN_MATCHER_MAX_ITEMS 1024
#define TERN_MATCHER_MAX_ITEM_LEN 1024

/* For matchers that take no condition: -1 with "takes no condition" when
 * one was given (even empty). Messages name no matcher: the engine puts
 * the step's path and the matcher's name in front. */
int tern_matcher_no_condition(const tern_mailet_params *p, const char *name, char *err,
                              size_t size);
/* The condition, or NULL with "needs a condition, e.g. Name=<usage>"
 * when missing or blank. */
const char *tern_matcher_condition(const tern_mailet_params *p, const char *name, const char *usage,
                                   char *err, size_t size);

/* A condition split on `sep`, each item trimmed of spaces and tabs. An
 * empty item (",,", a trailing ',') is an error: it is always a typo. */
typedef struct tern_matcher_list {
    char **items;
    size_t n;
} tern_matcher_list;

int tern_matcher_list_parse(const char *s, char sep, tern_matcher_list *out, char *err,
                            size_t size);
void tern_matcher_list_free(tern_matcher_list *l);

/* Checks a list of addresses ("user@example.org", optionally in <>; the
 * brackets are dropped in place). */
int tern_matcher_check_addresses(tern_matcher_list *l, char *err, size_t size);

/* A non-negative decimal integer within [min, max]. */
int tern_matcher_parse_count(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* Sets every recipient's flag to `yes`: the answer of matchers that look at
 * the sender or the message, which concern all recipients or none. */
void tern_matcher_all(tern_mail *m, bool *matched, bool yes);

/* A PCRE2 regex, case-insensitive unless the pattern says (?-i). `whole`
 * anchors it at both ends (James's matches()); otherwise it is searched
 * for anywhere in the subject. Subjects may be any bytes: invalid UTF-8
 * never matches a UTF-8 character but is not an error. The compiled
 * pattern is read-only after init and shared by every loop; match data is
 * made per call. */
typedef struct tern_matcher_regex tern_matcher_regex;

tern_matcher_regex *tern_matcher_regex_new(const char *pattern, bool whole, char *err, size_t size);
/* 1 match, 0 no match, -1 the limit was reached or out of memory. */
int tern_matcher_regex_match(const tern_matcher_regex *r, const char *subject, size_t len);
void tern_matcher_regex_free(tern_matcher_regex *r);

/* Networks: CIDRs ("10.0.0.0/8", "2001:db8::/32"), bare addresses, IPv4
 * with a dotted netmask ("192.168.0.0/255.255.0.0") or trailing wildcard
 * octets ("192.168.*"), as James writes them. */
typedef struct tern_matcher_nets {
    tern_cidr *nets;
    size_t n;
} tern_matcher_nets;

int tern_matcher_nets_parse(const char *cond, tern_matcher_nets *out, char *err, size_t size);
/* Whether the client address text (as the session wrote it) is in one of
 * the networks: 1 or 0; -1 when the text is not an IP address. */
int tern_matcher_nets_match(const tern_matcher_nets *n, const char *addr);
void tern_matcher_nets_free(tern_matcher_nets *n);

/* RemoteAddrInNetwork and RemoteAddrNotInNetwork, which differ only in
 * the answer they want: the condition's networks (default loopback and
 * 192.168.*) as the state, and a match of every recipient when the client
 * address is `inside` them (or not). Mail without a client (our own DSNs)
 * matches neither. */
int tern_matcher_remote_nets_init(const tern_mailet_params *p, const char *name, void **state_r,
                                  char *err, size_t size);
void tern_matcher_remote_nets_deinit(void *state);
int tern_matcher_remote_nets_match(void *state, tern_mail *m, const char *name, bool inside,
                                   bool *matched);

#endif
