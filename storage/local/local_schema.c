/* The local backend's SQLite schema (storage/schema.md, plus private
 * tables) and its upkeep: creation at open, the pragmas that make a COMMIT
 * durable, and pruning of the expunge log past the retention bound.
 * Input trusted: the database file is ours; a foreign schema_version is
 * refused rather than guessed at.
 *
 * Private additions to schema.md (the search SQL never reads them):
 *   expunged.time        when the expunge happened, for retention
 *   accounts.expunged_below_modseq  as mailboxes', per account
 *   pending_unlink(path) files to unlink once their COMMIT is durable
 *   thread_refs(account_id, msgid, thread_id)  every Message-ID and
 *                        reference of a message, so the JMAP thread rule is
 *                        one indexed lookup in both directions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "storage/local/local_internal.h"

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);"
    "CREATE TABLE IF NOT EXISTS domains(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);"
    "CREATE TABLE IF NOT EXISTS accounts(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
    " domain_id INTEGER NOT NULL, password_hash TEXT, quota_bytes INTEGER NOT NULL DEFAULT 0,"
    " quota_messages INTEGER NOT NULL DEFAULT 0, used_bytes INTEGER NOT NULL DEFAULT 0,"
    " used_messages INTEGER NOT NULL DEFAULT 0, highest_modseq INTEGER NOT NULL DEFAULT 0,"
    " expunged_below_modseq INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS accounts_domain ON accounts(domain_id);"
    "CREATE TABLE IF NOT EXISTS aliases(id INTEGER PRIMARY KEY, address TEXT NOT NULL,"
    " target TEXT NOT NULL, UNIQUE(address, target));"
    "CREATE TABLE IF NOT EXISTS mailboxes(id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL,"
    " name TEXT NOT NULL, special_use INTEGER NOT NULL DEFAULT 0,"
    " subscribed INTEGER NOT NULL DEFAULT 0, uidvalidity INTEGER NOT NULL,"
    " uidnext INTEGER NOT NULL DEFAULT 1, highest_modseq INTEGER NOT NULL DEFAULT 0,"
    " expunged_below_modseq INTEGER NOT NULL DEFAULT 0, UNIQUE(account_id, name));"
    "CREATE TABLE IF NOT EXISTS messages(id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL,"
    " mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL, modseq INTEGER NOT NULL,"
    " flags INTEGER NOT NULL DEFAULT 0, internal_date INTEGER NOT NULL, size INTEGER NOT NULL,"
    " email_id TEXT NOT NULL, thread_id TEXT NOT NULL, recent INTEGER NOT NULL DEFAULT 0,"
    " hdr_date INTEGER, subject TEXT, base_subject TEXT, from_addr TEXT, to_addr TEXT,"
    " cc_addr TEXT, bcc_addr TEXT, message_id TEXT, in_reply_to TEXT, refs TEXT,"
    " body_ref TEXT NOT NULL, UNIQUE(mailbox_id, uid));"
    "CREATE INDEX IF NOT EXISTS messages_modseq ON messages(account_id, modseq);"
    "CREATE INDEX IF NOT EXISTS messages_mbox_modseq ON messages(mailbox_id, modseq);"
    "CREATE INDEX IF NOT EXISTS messages_email ON messages(account_id, email_id);"
    "CREATE INDEX IF NOT EXISTS messages_msgid ON messages(account_id, message_id);"
    "CREATE TABLE IF NOT EXISTS keywords(message INTEGER NOT NULL, keyword TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS keywords_message ON keywords(message);"
    "CREATE INDEX IF NOT EXISTS keywords_keyword ON keywords(keyword);"
    /* Keywords keep the case they were first written in and match without
     * it (the mailbox's spelling is looked up this way); RECENT_CLAIM
     * finds the few recent rows without a scan of the mailbox. Both are
     * created on open, so older databases get them too. */
    "CREATE INDEX IF NOT EXISTS keywords_lower ON keywords(lower(keyword));"
    "CREATE INDEX IF NOT EXISTS messages_recent ON messages(mailbox_id) WHERE recent <> 0;"
    "CREATE TABLE IF NOT EXISTS headers(message INTEGER NOT NULL, name TEXT NOT NULL, value TEXT);"
    "CREATE INDEX IF NOT EXISTS headers_message ON headers(message, name);"
    "CREATE TABLE IF NOT EXISTS expunged(mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,"
    " modseq INTEGER NOT NULL, time INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged(mailbox_id, modseq);"
    "CREATE INDEX IF NOT EXISTS expunged_time ON expunged(time);"
    "CREATE TABLE IF NOT EXISTS pending_unlink(path TEXT PRIMARY KEY);"
    "CREATE TABLE IF NOT EXISTS thread_refs(account_id INTEGER NOT NULL, msgid TEXT NOT NULL,"
    " thread_id TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS thread_refs_msgid ON thread_refs(account_id, msgid);"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', '" LOCAL_SCHEMA_VERSION "');"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('last_uidvalidity', '0');";

static int fail(local_store *L, char **error_r, const char *what)
{
    if (error_r) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s: %s", what, sqlite3_errmsg(L->db));
        *error_r = strdup(buf);
    }
    return -1;
}

int local_schema_create(local_store *L, char **error_r)
{
    char *msg = NULL;
    /* WAL so readers of other processes (ternctl) never block the writer;
     * synchronous=FULL so that COMMIT returning means the WAL is on disk:
     * an acknowledged append must survive power loss, and batching keeps
     * the cost at one WAL fsync per batch. */
    if (sqlite3_exec(L->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                            " PRAGMA foreign_keys=OFF; PRAGMA temp_store=MEMORY;"
                            " PRAGMA cache_size=-65536;",
                     NULL, NULL, &msg) != SQLITE_OK) {
        sqlite3_free(msg);
        return fail(L, error_r, "pragmas");
    }
    if (sqlite3_exec(L->db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK) {
        sqlite3_free(msg);
        return fail(L, error_r, "begin");
    }
    if (sqlite3_exec(L->db, schema_sql, NULL, NULL, &msg) != SQLITE_OK) {
        sqlite3_free(msg);
        fail(L, error_r, "schema");
        sqlite3_exec(L->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    sqlite3_stmt *st = NULL;
    int ok = 0;
    if (sqlite3_prepare_v2(L->db, "SELECT value FROM meta WHERE key='schema_version'", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        ok = v && strcmp(v, LOCAL_SCHEMA_VERSION) == 0;
        if (!ok && error_r) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s: schema_version %s, this ternd knows %s", L->db_path,
                     v ? v : "?", LOCAL_SCHEMA_VERSION);
            *error_r = strdup(buf);
        }
    }
    sqlite3_finalize(st);
    if (!ok) {
        sqlite3_exec(L->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (sqlite3_exec(L->db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
        sqlite3_free(msg);
        return fail(L, error_r, "commit");
    }
    return 0;
}

int local_prune_expunged(local_store *L, tern_store_req *req)
{
    int64_t cutoff = local_now() - (int64_t)(L->retention_ms / 1000);
    sqlite3_stmt *st = local_stmt(
        L, "UPDATE mailboxes SET expunged_below_modseq = max(expunged_below_modseq,"
           " (SELECT max(e.modseq) FROM expunged e WHERE e.mailbox_id = mailboxes.id"
           " AND e.time < ?1)) WHERE id IN (SELECT mailbox_id FROM expunged WHERE time < ?1)");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, cutoff);
    int r = local_run(L, req, st);
    if (r != TERN_STORE_OK)
        return r;
    st = local_stmt(L, "UPDATE accounts SET expunged_below_modseq = max(expunged_below_modseq,"
                       " (SELECT max(e.modseq) FROM expunged e JOIN mailboxes b"
                       " ON b.id = e.mailbox_id WHERE b.account_id = accounts.id"
                       " AND e.time < ?1)) WHERE id IN (SELECT b.account_id FROM expunged e"
                       " JOIN mailboxes b ON b.id = e.mailbox_id WHERE e.time < ?1)");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, cutoff);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    st = local_stmt(L, "DELETE FROM expunged WHERE time < ?");
    if (st == NULL)
        return TERN_STORE_EIO;
    sqlite3_bind_int64(st, 1, cutoff);
    if ((r = local_run(L, req, st)) != TERN_STORE_OK)
        return r;
    int n = sqlite3_changes(L->db);
    if (n > 0)
        TLOG_INFO("store", "event=expunged_pruned rows=%d", n);
    return TERN_STORE_OK;
}
