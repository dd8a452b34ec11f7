/* The PostgreSQL schema (storage/schema.md) and its creation at open: one
 * blocking connection, an advisory lock so that several ternd nodes
 * starting together do not race on CREATE ... IF NOT EXISTS, then the
 * statements of each version not yet applied, recorded in
 * meta.schema_version. A database with a newer version than this binary
 * knows is refused.
 *
 * Input trusted: the conninfo from the validated config. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"
#include "storage/pg/pg_internal.h"

#define PG_SCHEMA_VERSION 4
#define PG_SCHEMA_LOCK "7367230117"  /* advisory lock key: "tern schema" */

/* Version 1. `body_ref` is BIGINT here: in this backend it is bodies.id. */
static const char *const schema_v1[] = {
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS domains (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS accounts ("
    " id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " domain_id BIGINT NOT NULL REFERENCES domains(id),"
    " password_hash TEXT, quota_bytes BIGINT NOT NULL DEFAULT 0,"
    " quota_messages BIGINT NOT NULL DEFAULT 0, used_bytes BIGINT NOT NULL DEFAULT 0,"
    " used_messages BIGINT NOT NULL DEFAULT 0, highest_modseq BIGINT NOT NULL DEFAULT 1,"
    " expunged_below_modseq BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS aliases (id BIGSERIAL PRIMARY KEY, address TEXT NOT NULL,"
    " target TEXT NOT NULL, UNIQUE (address, target))",
    "CREATE TABLE IF NOT EXISTS mailboxes ("
    " id BIGSERIAL PRIMARY KEY,"
    " account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,"
    " name TEXT NOT NULL, special_use INTEGER NOT NULL DEFAULT 0,"
    " subscribed INTEGER NOT NULL DEFAULT 0, uidvalidity BIGINT NOT NULL,"
    " uidnext BIGINT NOT NULL DEFAULT 1, highest_modseq BIGINT NOT NULL DEFAULT 0,"
    " expunged_below_modseq BIGINT NOT NULL DEFAULT 0, UNIQUE (account_id, name))",
    "CREATE TABLE IF NOT EXISTS bodies (id BIGSERIAL PRIMARY KEY, data BYTEA NOT NULL,"
    " refcount INTEGER NOT NULL DEFAULT 1)",
    /* FETCH_BODY reads slices: uncompressed out-of-line storage lets
     * substring() read only the chunks it needs. */
    "ALTER TABLE bodies ALTER COLUMN data SET STORAGE EXTERNAL",
    "CREATE TABLE IF NOT EXISTS messages ("
    " id BIGSERIAL PRIMARY KEY, account_id BIGINT NOT NULL,"
    " mailbox_id BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,"
    " uid BIGINT NOT NULL, modseq BIGINT NOT NULL, flags INTEGER NOT NULL DEFAULT 0,"
    " internal_date BIGINT NOT NULL, size BIGINT NOT NULL, email_id TEXT NOT NULL,"
    " thread_id TEXT NOT NULL, recent INTEGER NOT NULL DEFAULT 0, hdr_date BIGINT,"
    " subject TEXT, base_subject TEXT, from_addr TEXT, to_addr TEXT, cc_addr TEXT,"
    " bcc_addr TEXT, message_id TEXT, in_reply_to TEXT, refs TEXT, body_ref BIGINT NOT NULL,"
    " UNIQUE (mailbox_id, uid))",
    "CREATE INDEX IF NOT EXISTS messages_mailbox_modseq ON messages (mailbox_id, modseq)",
    "CREATE INDEX IF NOT EXISTS messages_account_msgid ON messages (account_id, message_id)",
    "CREATE INDEX IF NOT EXISTS messages_account_irt ON messages (account_id, in_reply_to) "
    "WHERE in_reply_to IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_body ON messages (body_ref)",
    "CREATE TABLE IF NOT EXISTS keywords ("
    " message BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
    " keyword TEXT NOT NULL, PRIMARY KEY (message, keyword))",
    "CREATE INDEX IF NOT EXISTS keywords_keyword ON keywords (keyword)",
    "CREATE TABLE IF NOT EXISTS headers ("
    " message BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
    " name TEXT NOT NULL, value TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS headers_message_name ON headers (message, name)",
    "CREATE TABLE IF NOT EXISTS expunged (mailbox_id BIGINT NOT NULL, uid BIGINT NOT NULL,"
    " modseq BIGINT NOT NULL, at BIGINT NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS expunged_mailbox_modseq ON expunged (mailbox_id, modseq)",
    /* Lets one statement give up on a concurrent change with a clean,
     * retryable error (serialization_failure) instead of doing half its
     * work: see the APPEND statement. */
    "CREATE OR REPLACE FUNCTION tern_retry(what text) RETURNS text LANGUAGE plpgsql AS "
    "$$BEGIN RAISE EXCEPTION 'concurrent change: %', what USING ERRCODE = '40001'; END$$",
    NULL,
};

/* Version 2. Keywords keep the case they were first written in and match
 * without it: the spelling a mailbox already uses is found through
 * lower(keyword). RECENT_CLAIM finds the few recent rows of a mailbox
 * without reading the others. */
static const char *const schema_v2[] = {
    "CREATE INDEX IF NOT EXISTS keywords_lower ON keywords (lower(keyword))",
    "CREATE INDEX IF NOT EXISTS messages_recent ON messages (mailbox_id) WHERE recent <> 0",
    NULL,
};

/* Version 3: bodies are content-addressed, so the copies of one delivery
 * to several accounts (and any other appends of equal bytes) share one row;
 * what differs per copy (LocalDelivery's Return-Path and Delivered-To) is
 * the message's `prefix`, read in front of the body. Rows written before
 * have no hash and are never shared with new ones. */
static const char *const schema_v3[] = {
    "ALTER TABLE bodies ADD COLUMN IF NOT EXISTS hash BYTEA",
    "CREATE UNIQUE INDEX IF NOT EXISTS bodies_hash ON bodies (hash)",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS prefix BYTEA",
    /* The header index had a foreign key to messages: a check per header
     * row, some 30 per real message, about a third of an append's server
     * time. Its rows go with their message through one statement-level
     * trigger instead (it also runs for the cascades from mailboxes and
     * accounts); only APPEND and COPY insert them, with their message. */
    "ALTER TABLE headers DROP CONSTRAINT IF EXISTS headers_message_fkey",
    "CREATE OR REPLACE FUNCTION tern_headers_gc() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN DELETE FROM headers h USING gone g WHERE h.message = g.id; RETURN NULL; END$$",
    "DROP TRIGGER IF EXISTS messages_headers_gc ON messages",
    "CREATE TRIGGER messages_headers_gc AFTER DELETE ON messages REFERENCING OLD TABLE AS gone "
    "FOR EACH STATEMENT EXECUTE FUNCTION tern_headers_gc()",
    NULL,
};

/* Version 4: an append is one call of tern_append, a function of plain
 * statements, each a lookup or write by key. The one statement of CTEs it
 * replaces was planned again at every call (twice its execution's cost),
 * and whatever plan PostgreSQL kept for it depended on statistics a
 * growing table outdates: its thread lookup, `message_id = ANY (refs)`,
 * was kept as a scan of all the account's messages. Here each reference
 * is one index probe, and each statement's plan is made once per session.
 *
 * The account's row is locked first, and charged only if the mailbox
 * exists and the quota allows; the mailbox is then read under that lock
 * (each statement sees what committed before it), so a rename committed
 * meanwhile is seen, and the charge is taken back before answering "no
 * row", which tells the caller to run the append alone for its precise
 * error. Returns no row when it changed nothing.
 *
 * Bodies may also live in the blob directory (postgres.blob_dir,
 * pg_blob.c): such a row is `external`, has no data, and its hash names
 * the file. Rows of both kinds live together, so turning the option on
 * later keeps the bodies already in the database readable; with it an
 * append passes p_data NULL and p_hash, the body's sha256 (the database
 * never sees the bytes); without it p_hash is NULL. */
static const char *const schema_v4[] = {
    "ALTER TABLE bodies ALTER COLUMN data DROP NOT NULL",
    "ALTER TABLE bodies ADD COLUMN IF NOT EXISTS external BOOLEAN NOT NULL DEFAULT false",
    /* Re-runnable, like the versions before (a database put back to an
     * older version number runs them again). */
    "ALTER TABLE bodies DROP CONSTRAINT IF EXISTS bodies_data_or_external",
    "ALTER TABLE bodies ADD CONSTRAINT bodies_data_or_external"
    " CHECK (external OR data IS NOT NULL)",
    "CREATE OR REPLACE FUNCTION tern_append(p_account text, p_mailbox text, p_size bigint,"
    " p_data bytea, p_flags integer, p_idate bigint, p_refs text[], p_msgid text,"
    " p_hdate bigint, p_subject text, p_base text, p_from text, p_to text, p_cc text,"
    " p_bcc text, p_irt text, p_refs_text text, p_keywords text[], p_hnames text[],"
    " p_hvalues text[], p_prefix bytea, p_hash bytea)"
    " RETURNS TABLE (uidvalidity bigint, uid bigint, modseq bigint, email_id text,"
    " thread_id text, mailbox_id bigint)"
    " LANGUAGE plpgsql AS $$\n"
    "DECLARE v_acc bigint; v_modseq bigint; v_mbox bigint; v_uidv bigint; v_uid bigint;\n"
    " v_body bigint; v_n bigint; v_thread text; v_msg bigint; r text;\n"
    "BEGIN\n"
    " UPDATE accounts a SET highest_modseq = a.highest_modseq + 1,"
    "  used_bytes = a.used_bytes + p_size, used_messages = a.used_messages + 1"
    "  WHERE a.name = p_account AND (a.quota_bytes = 0 OR a.used_bytes + p_size <= a.quota_bytes)"
    "  AND (a.quota_messages = 0 OR a.used_messages + 1 <= a.quota_messages)"
    "  RETURNING a.id, a.highest_modseq INTO v_acc, v_modseq;\n"
    " IF NOT FOUND THEN RETURN; END IF;\n"
    " UPDATE mailboxes b SET uidnext = b.uidnext + 1, highest_modseq = v_modseq"
    "  WHERE b.account_id = v_acc AND b.name = p_mailbox"
    "  RETURNING b.id, b.uidvalidity, b.uidnext - 1 INTO v_mbox, v_uidv, v_uid;\n"
    " IF NOT FOUND THEN\n"
    "  UPDATE accounts a SET highest_modseq = a.highest_modseq - 1,"
    "   used_bytes = a.used_bytes - p_size, used_messages = a.used_messages - 1 WHERE a.id = v_acc;\n"
    "  RETURN;\n"
    " END IF;\n"
    /* A body in the blob directory: p_data NULL, p_hash its sha256. */
    " INSERT INTO bodies AS x (data, refcount, hash, external)"
    "  VALUES (p_data, 1, coalesce(p_hash, sha256(p_data)), p_data IS NULL)"
    "  ON CONFLICT (hash) DO UPDATE SET refcount = x.refcount + 1 RETURNING x.id INTO v_body;\n"
    /* The Email and Thread ids come from the bodies' sequence, not the
     * body row, which may be shared; the sequence made the older ids too. */
    " v_n := nextval('bodies_id_seq');\n"
    " IF p_refs IS NOT NULL THEN\n"
    "  FOREACH r IN ARRAY p_refs LOOP\n"
    "   SELECT t.thread_id INTO v_thread FROM messages t"
    "    WHERE t.account_id = v_acc AND t.message_id = r LIMIT 1;\n"
    "   EXIT WHEN v_thread IS NOT NULL;\n"
    "  END LOOP;\n"
    " END IF;\n"
    /* A reply that arrived before its parent: the parent joins its thread. */
    " IF v_thread IS NULL AND p_msgid IS NOT NULL THEN\n"
    "  SELECT t.thread_id INTO v_thread FROM messages t"
    "   WHERE t.account_id = v_acc AND t.in_reply_to = p_msgid AND t.in_reply_to IS NOT NULL"
    "   LIMIT 1;\n"
    " END IF;\n"
    " INSERT INTO messages (account_id, mailbox_id, uid, modseq, flags, internal_date, size,"
    "  email_id, thread_id, recent, hdr_date, subject, base_subject, from_addr, to_addr,"
    "  cc_addr, bcc_addr, message_id, in_reply_to, refs, body_ref, prefix)"
    "  VALUES (v_acc, v_mbox, v_uid, v_modseq, p_flags, p_idate, p_size, 'M' || v_n,"
    "  coalesce(v_thread, 'T' || v_n), 1, p_hdate, p_subject, p_base, p_from, p_to, p_cc,"
    "  p_bcc, p_msgid, p_irt, p_refs_text, v_body, p_prefix) RETURNING id INTO v_msg;\n"
    /* A keyword takes the spelling its mailbox already uses. */
    " IF cardinality(p_keywords) > 0 THEN\n"
    "  INSERT INTO keywords (message, keyword)"
    "   SELECT DISTINCT ON (lower(k)) v_msg, coalesce((SELECT x.keyword FROM keywords x"
    "   JOIN messages y ON y.id = x.message WHERE y.mailbox_id = v_mbox"
    "   AND lower(x.keyword) = lower(k) LIMIT 1), k) FROM unnest(p_keywords) k;\n"
    " END IF;\n"
    " IF cardinality(p_hnames) > 0 THEN\n"
    "  INSERT INTO headers (message, name, value)"
    "   SELECT v_msg, h.n, h.v FROM unnest(p_hnames, p_hvalues) AS h(n, v);\n"
    " END IF;\n"
    " RETURN QUERY SELECT v_uidv, v_uid, v_modseq, 'M' || v_n, coalesce(v_thread, 'T' || v_n),"
    "  v_mbox;\n"
    "END$$",
    NULL,
};

/* Migrations: migrations[v - 1] takes a database from version v - 1 to v.
 * A new version appends an array here and bumps PG_SCHEMA_VERSION; a
 * released array is never edited. */
static const char *const *const migrations[PG_SCHEMA_VERSION] = {schema_v1, schema_v2,
                                                                    schema_v3, schema_v4};

static int exec(PGconn *c, const char *sql, char **error_r)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char buf[512];
        snprintf(buf, sizeof buf, "postgres schema: %s", PQresultErrorMessage(r));
        buf[strcspn(buf, "\n")] = 0;
        *error_r = strdup(buf);
        PQclear(r);
        return -1;
    }
    PQclear(r);
    return 0;
}

int pg_schema_create(const char *conninfo, char **error_r)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        char buf[512];
        snprintf(buf, sizeof buf, "postgres: cannot connect: %s", PQerrorMessage(c));
        buf[strcspn(buf, "\n")] = 0;
        *error_r = strdup(buf);
        PQfinish(c);
        return -1;
    }
    int rc = -1;
    bool in_tx = false;
    PGresult *r = NULL;
    if (exec(c, "SET client_min_messages = warning", error_r) < 0 ||
        exec(c, "SELECT pg_advisory_lock(" PG_SCHEMA_LOCK ")", error_r) < 0)
        goto out;
    if (exec(c, schema_v1[0], error_r) < 0)
        goto out;
    r = PQexec(c, "SELECT value FROM meta WHERE key = 'schema_version'");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        *error_r = strdup("postgres schema: cannot read meta");
        goto unlock;
    }
    long have = PQntuples(r) ? strtol(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    if (have > PG_SCHEMA_VERSION) {
        char buf[128];
        snprintf(buf, sizeof buf, "postgres schema version %ld is newer than this ternd (%d)",
                 have, PG_SCHEMA_VERSION);
        *error_r = strdup(buf);
        goto unlock;
    }
    for (long v = have + 1; v <= PG_SCHEMA_VERSION; v++) {
        if (exec(c, "BEGIN", error_r) < 0)
            goto unlock;
        in_tx = true;
        const char *const *stmts = migrations[v - 1];
        for (size_t i = 0; stmts[i]; i++)
            if (exec(c, stmts[i], error_r) < 0)
                goto unlock;
        if (v == 1) {
            /* UIDVALIDITY must differ for a mailbox re-created under the
             * same name, across nodes: one database sequence, started at
             * the creation time so it also differs from a dropped
             * database's. */
            char seq[200];
            snprintf(seq, sizeof seq,
                     "CREATE SEQUENCE IF NOT EXISTS uidvalidity_seq START WITH %" PRId64
                     " MAXVALUE 4294967295 CYCLE",
                     (int64_t)time(NULL));
            if (exec(c, seq, error_r) < 0)
                goto unlock;
        }
        char set[160];
        snprintf(set, sizeof set,
                 "INSERT INTO meta (key, value) VALUES ('schema_version', '%ld') "
                 "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", v);
        if (exec(c, set, error_r) < 0 || exec(c, "COMMIT", error_r) < 0)
            goto unlock;
        in_tx = false;
        TLOG_INFO("store", "event=pg_schema_migrated version=%ld", v);
    }
    rc = 0;
unlock:
    if (rc < 0 && in_tx) {
        PGresult *x = PQexec(c, "ROLLBACK");
        PQclear(x);
    }
    {
        char *ignored = NULL;
        exec(c, "SELECT pg_advisory_unlock(" PG_SCHEMA_LOCK ")", &ignored);
        free(ignored);
    }
out:
    if (r)
        PQclear(r);
    PQfinish(c);
    return rc;
}
