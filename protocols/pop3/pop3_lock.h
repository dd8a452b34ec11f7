/* The POP3 maildrop lock (RFC 1939 8: "exclusive-access lock on the
 * maildrop"; RFC 2449 8.1.1 [IN-USE]) and the per-account time of the last
 * login for LOGIN-DELAY. One table for the whole process: every worker
 * loop is a thread, so it is guarded by a mutex and held only for a lookup.
 *
 * Scope: this process. Several ternd nodes sharing one PostgreSQL store do
 * not see each other's locks (docs/pop3.md says so); the snapshot model
 * keeps a second session's view consistent anyway, and a message deleted
 * by both is simply gone.
 * Input: account names from auth/ (canonical, trusted). */
#ifndef TERN_POP3_LOCK_H
#define TERN_POP3_LOCK_H

#include <stdbool.h>
#include <stdint.h>

/* Takes the account's lock. false when another session holds it. */
bool tern_pop3_lock_acquire(const char *account);
void tern_pop3_lock_release(const char *account);

/* LOGIN-DELAY: true when the account's last login in this process was less
 * than delay_ms ago (now_ms monotonic); otherwise records now_ms as the
 * last login and returns false. delay_ms 0: always false, nothing kept. */
bool tern_pop3_login_too_soon(const char *account, uint64_t delay_ms, uint64_t now_ms);

#endif
