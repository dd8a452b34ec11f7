/* The directory ops of the PostgreSQL backend: domains, accounts (with
 * their default mailboxes), aliases and catch-alls, the SMTP recipient
 * lookup and quotas. Each op is a protothread (pg_internal.h).
 *
 * Input trusted: parameters from our own code; names are still checked
 * with the shared tern_store__valid_* so both backends refuse the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/pg/pg_internal.h"

static uint64_t affected(const PGresult *r)
{
    const char *s = PQcmdTuples((PGresult *)r);
    return s && *s ? strtoull(s, NULL, 10) : 0;
}

static const char *domain_of(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : NULL;
}

/* Lowercases the domain part and checks the shape "x@domain" (local part
 * may be empty when allow_empty_local, for catch-alls). */
static const char *norm_address(pg_job *j, const char *addr, bool allow_empty_local)
{
    if (!addr)
        return NULL;
    const char *a = pg_norm_account(&j->a, addr);
    const char *at = strrchr(a, '@');
    if (!at || (!allow_empty_local && at == a) || !tern_store__valid_domain(at + 1))
        return NULL;
    return a;
}

int pg_op_domain_add(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.domain || !tern_store__valid_domain(r->in.domain))
        return pg_done(j, TERN_STORE_EINVAL, "bad domain name");
    pg_p_str(j, pg_lower(&j->a, r->in.domain));
    PG_QUERY(j, "INSERT INTO domains (name) VALUES ($1)");
    PG_END(j);
}

int pg_op_domain_remove(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.domain)
        return pg_done(j, TERN_STORE_EINVAL, "no domain");
    j->mbox = pg_lower(&j->a, r->in.domain);
    PG_TX(j);
    pg_p_str(j, j->mbox);
    PG_QUERY(j, "SELECT id, EXISTS (SELECT 1 FROM accounts a WHERE a.domain_id = d.id) "
                "FROM domains d WHERE name = $1 FOR UPDATE");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such domain");
    if (PQgetvalue(j->res, 0, 1)[0] == 't')
        return pg_done(j, TERN_STORE_ENOTEMPTY, "domain has accounts");
    pg_p_u64(j, pg_u64(j->res, 0, 0));
    pg_p_str(j, j->mbox);
    PG_QUERY(j, "WITH a AS (DELETE FROM aliases "
                "WHERE substr(address, strpos(address, '@') + 1) = $2) "
                "DELETE FROM domains WHERE id = $1");
    PG_END(j);
}

int pg_op_domain_list(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    PG_QUERY(j, "SELECT name FROM domains ORDER BY name");
    {
        int n = PQntuples(j->res);
        r->out.names = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof(char *));
        for (int i = 0; i < n; i++)
            r->out.names[i] = pg_str(j, j->res, i, 0);
        r->out.n_names = (size_t)n;
    }
    PG_END(j);
}

static void account_row(pg_job *j, const PGresult *res, int row, tern_account_info *out)
{
    out->name = pg_str(j, res, row, 0);
    out->quota_bytes = pg_u64(res, row, 1);
    out->quota_messages = pg_u64(res, row, 2);
    out->used_bytes = pg_u64(res, row, 3);
    out->used_messages = pg_u64(res, row, 4);
    out->has_password = PQgetvalue(res, row, 5)[0] == 't';
}

#define ACCOUNT_COLS \
    "name, quota_bytes, quota_messages, used_bytes, used_messages, password_hash IS NOT NULL"

int pg_op_account_create(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account || !tern_store__valid_account_name(r->in.account))
        return pg_done(j, TERN_STORE_EINVAL, "bad account name");
    j->acct = pg_norm_account(&j->a, r->in.account);
    PG_TX(j);
    pg_p_str(j, j->acct);
    pg_p_str(j, domain_of(j->acct));
    pg_p_str(j, r->in.password_hash);
    pg_p_u64(j, r->in.quota_bytes ? r->in.quota_bytes : j->pg->default_quota_bytes);
    pg_p_u64(j, r->in.quota_messages ? r->in.quota_messages : j->pg->default_quota_messages);
    PG_QUERY(j, "INSERT INTO accounts (name, domain_id, password_hash, quota_bytes, quota_messages) "
                "SELECT $1, d.id, $3, $4, $5 FROM domains d WHERE d.name = $2 "
                "RETURNING id, " ACCOUNT_COLS);
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such domain");
    j->account_id = pg_u64(j->res, 0, 0);
    {
        /* columns 1.. are ACCOUNT_COLS */
        tern_account_info *a = &r->out.account;
        a->name = pg_str(j, j->res, 0, 1);
        a->quota_bytes = pg_u64(j->res, 0, 2);
        a->quota_messages = pg_u64(j->res, 0, 3);
        a->has_password = PQgetvalue(j->res, 0, 6)[0] == 't';
        const char *names[6];
        char *uses = tern_arena_alloc(&j->a, 6 * 12 + 3);
        size_t o = 0;
        uses[o++] = '{';
        for (size_t i = 0; i < 6; i++) {
            names[i] = tern_store_default_mailboxes[i].name;
            o += (size_t)sprintf(uses + o, "%s%u", i ? "," : "",
                                 tern_store_default_mailboxes[i].special_use);
        }
        uses[o++] = '}';
        uses[o] = 0;
        pg_p_u64(j, j->account_id);
        pg_p_strarray(j, names, 6, false);
        pg_p_str(j, uses);
    }
    PG_QUERY(j, "INSERT INTO mailboxes (account_id, name, special_use, subscribed, uidvalidity, "
                "uidnext, highest_modseq) "
                "SELECT $1, t.n, t.s, 1, nextval('uidvalidity_seq'), 1, 1 "
                "FROM unnest($2::text[], $3::int[]) AS t(n, s)");
    PG_END(j);
}

int pg_op_account_delete(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account)
        return pg_done(j, TERN_STORE_EINVAL, "no account");
    j->acct = pg_norm_account(&j->a, r->in.account);
    PG_TX(j);
    pg_p_str(j, j->acct);
    PG_QUERY(j, "SELECT id FROM accounts WHERE name = $1 FOR UPDATE");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such account");
    j->account_id = pg_u64(j->res, 0, 0);
    pg_p_u64(j, j->account_id);
    /* Every reference this account holds goes; a body other accounts
     * still use (a delivery to several) is kept. */
    PG_QUERY(j, "WITH c AS (SELECT body_ref, count(*) AS n FROM messages "
                "WHERE account_id = $1 GROUP BY body_ref), "
                PG_BODY_UNREF
                "SELECT " PG_BODY_DEAD);
    j->p = PQgetisnull(j->res, 0, 0) ? NULL : tern_arena_strdup(&j->a, PQgetvalue(j->res, 0, 0));
    if (j->p) {
        pg_p_str(j, j->p);
        PG_QUERY(j, PG_BODY_DELETE);
        pg_blob_note_dead(j, j->res);
    }
    pg_p_u64(j, j->account_id);
    PG_QUERY(j, "WITH e AS (DELETE FROM expunged WHERE mailbox_id IN "
                "(SELECT id FROM mailboxes WHERE account_id = $1)) "
                "DELETE FROM accounts WHERE id = $1");
    pg_note(j, 0, 0);
    PG_END(j);
}

int pg_op_account_get(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account)
        return pg_done(j, TERN_STORE_EINVAL, "no account");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    PG_QUERY(j, "SELECT " ACCOUNT_COLS ", password_hash FROM accounts WHERE name = $1");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such account");
    account_row(j, j->res, 0, &r->out.account);
    r->out.account.password_hash = pg_str(j, j->res, 0, 6);
    PG_END(j);
}

int pg_op_quota_get(pg_job *j)
{
    return pg_op_account_get(j);
}

int pg_op_account_list(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    pg_p_str(j, r->in.domain ? pg_lower(&j->a, r->in.domain) : NULL);
    PG_QUERY(j, "SELECT " ACCOUNT_COLS " FROM accounts "
                "WHERE $1::text IS NULL OR substr(name, strpos(name, '@') + 1) = $1 "
                "ORDER BY name");
    {
        int n = PQntuples(j->res);
        r->out.accounts = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof *r->out.accounts);
        for (int i = 0; i < n; i++)
            account_row(j, j->res, i, &r->out.accounts[i]);
        r->out.n_accounts = (size_t)n;
    }
    PG_END(j);
}

int pg_op_account_set_password(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account)
        return pg_done(j, TERN_STORE_EINVAL, "no account");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_str(j, r->in.password_hash);
    PG_QUERY(j, "UPDATE accounts SET password_hash = $2 WHERE name = $1");
    if (affected(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such account");
    PG_END(j);
}

int pg_op_account_set_quota(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    if (!r->in.account)
        return pg_done(j, TERN_STORE_EINVAL, "no account");
    pg_p_str(j, pg_norm_account(&j->a, r->in.account));
    pg_p_u64(j, r->in.quota_bytes);
    pg_p_u64(j, r->in.quota_messages);
    PG_QUERY(j, "UPDATE accounts SET quota_bytes = $2, quota_messages = $3 WHERE name = $1 "
                "RETURNING " ACCOUNT_COLS);
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such account");
    account_row(j, j->res, 0, &r->out.account);
    PG_END(j);
}

int pg_op_alias_add(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    j->mbox = norm_address(j, r->in.name, true);
    if (!j->mbox || r->in.n_targets == 0)
        return pg_done(j, TERN_STORE_EINVAL, "bad alias address or no targets");
    {
        const char **t = tern_arena_alloc(&j->a, r->in.n_targets * sizeof *t);
        for (size_t i = 0; i < r->in.n_targets; i++) {
            t[i] = norm_address(j, r->in.targets[i], false);
            if (!t[i])
                return pg_done(j, TERN_STORE_EINVAL, "bad alias target");
        }
        j->p = t;
    }
    pg_p_str(j, domain_of(j->mbox));
    PG_QUERY(j, "SELECT 1 FROM domains WHERE name = $1");
    if (PQntuples(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "alias domain is not ours");
    pg_p_str(j, j->mbox);
    pg_p_strarray(j, j->p, r->in.n_targets, false);
    PG_QUERY(j, "INSERT INTO aliases (address, target) SELECT DISTINCT $1, t FROM unnest($2::text[]) t "
                "ON CONFLICT DO NOTHING");
    if (affected(j->res) == 0)
        return pg_done(j, TERN_STORE_EEXISTS, "alias exists");
    PG_END(j);
}

int pg_op_alias_remove(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    j->mbox = norm_address(j, r->in.name, true);
    if (!j->mbox)
        return pg_done(j, TERN_STORE_EINVAL, "bad alias address");
    pg_p_str(j, j->mbox);
    if (r->in.n_targets) {
        const char **t = tern_arena_alloc(&j->a, r->in.n_targets * sizeof *t);
        for (size_t i = 0; i < r->in.n_targets; i++) {
            t[i] = norm_address(j, r->in.targets[i], false);
            if (!t[i])
                t[i] = r->in.targets[i];
        }
        pg_p_strarray(j, t, r->in.n_targets, false);
    } else {
        pg_p_str(j, NULL);
    }
    PG_QUERY(j, "DELETE FROM aliases WHERE address = $1 AND ($2::text[] IS NULL OR target = ANY ($2))");
    if (affected(j->res) == 0)
        return pg_done(j, TERN_STORE_ENOTFOUND, "no such alias");
    PG_END(j);
}

int pg_op_alias_list(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    pg_p_str(j, r->in.domain ? pg_lower(&j->a, r->in.domain) : NULL);
    PG_QUERY(j, "SELECT address, string_agg(target, ',' ORDER BY target) FROM aliases "
                "WHERE $1::text IS NULL OR substr(address, strpos(address, '@') + 1) = $1 "
                "GROUP BY address ORDER BY address");
    {
        int n = PQntuples(j->res);
        r->out.names = tern_arena_alloc(&r->arena, (size_t)(n + 1) * sizeof(char *));
        for (int i = 0; i < n; i++)
            r->out.names[i] = tern_arena_printf(&r->arena, "%s %s", PQgetvalue(j->res, i, 0),
                                                PQgetvalue(j->res, i, 1));
        r->out.n_names = (size_t)n;
    }
    PG_END(j);
}

/* Order: exact account, exact alias, then with +detail stripped the
 * account and the alias, then the domain's catch-all. One round trip; the
 * priority column says which rule matched. */
int pg_op_rcpt_lookup(pg_job *j)
{
    tern_store_req *r = j->req;
    PG_BEGIN(j);
    j->acct = norm_address(j, r->in.name, false);
    if (!j->acct) {
        r->out.rcpt.kind = TERN_RCPT_NOT_LOCAL;
        return PG_DONE;
    }
    {
        char *base = NULL, *detail = NULL;
        if (tern_store__split_detail(&j->a, j->acct, &base, &detail)) {
            j->mbox = base;
            r->out.rcpt.detail = tern_arena_strdup(&r->arena, detail);
        }
    }
    pg_p_str(j, j->acct);
    pg_p_str(j, j->mbox);
    pg_p_str(j, tern_arena_printf(&j->a, "@%s", domain_of(j->acct)));
    pg_p_str(j, domain_of(j->acct));
    PG_QUERY(j,
             "SELECT 0, NULL::text, EXISTS (SELECT 1 FROM domains WHERE name = $4) "
             "UNION ALL SELECT 1, name, true FROM accounts WHERE name = $1 "
             "UNION ALL SELECT 2, target, EXISTS (SELECT 1 FROM accounts a WHERE a.name = target) "
             "FROM aliases WHERE address = $1 "
             "UNION ALL SELECT 3, name, true FROM accounts WHERE name = $2 "
             "UNION ALL SELECT 4, target, EXISTS (SELECT 1 FROM accounts a WHERE a.name = target) "
             "FROM aliases WHERE address = $2 "
             "UNION ALL SELECT 5, target, EXISTS (SELECT 1 FROM accounts a WHERE a.name = target) "
             "FROM aliases WHERE address = $3");
    {
        tern_rcpt_result *o = &r->out.rcpt;
        int n = PQntuples(j->res);
        bool ours = false;
        int best = 0;
        for (int i = 0; i < n; i++) {
            int prio = atoi(PQgetvalue(j->res, i, 0));
            if (prio == 0)
                ours = PQgetvalue(j->res, i, 2)[0] == 't';
            else if (best == 0 || prio < best)
                best = prio;
        }
        if (!ours) {
            o->kind = TERN_RCPT_NOT_LOCAL;
            o->detail = NULL;
            return PG_DONE;
        }
        if (best == 0) {
            o->kind = TERN_RCPT_UNKNOWN;
            o->detail = NULL;
            return PG_DONE;
        }
        if (best == 1 || best == 2 || best == 5)
            o->detail = NULL;
        o->kind = best == 1 || best == 3 ? TERN_RCPT_ACCOUNT : TERN_RCPT_ALIAS;
        o->catch_all = best == 5;
        o->targets = tern_arena_alloc(&r->arena, (size_t)n * sizeof(char *));
        o->target_is_local = tern_arena_alloc(&r->arena, (size_t)n * sizeof(bool));
        for (int i = 0; i < n; i++) {
            if (atoi(PQgetvalue(j->res, i, 0)) != best)
                continue;
            o->targets[o->n_targets] = pg_str(j, j->res, i, 1);
            o->target_is_local[o->n_targets] = PQgetvalue(j->res, i, 2)[0] == 't';
            o->n_targets++;
        }
    }
    PG_END(j);
}
