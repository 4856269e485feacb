/*
 * ngp_connrate: the compiled session-rate client of the benchmark.
 *
 * Does per session what `loadgen.py connrate --ngp SERVICE:USER:PASSWORD_FILE` does: a
 * non-blocking TCP connect, the NGP/1 greeting, SCRAM-SHA-256 (RFC 5802, RFC 7677) with the
 * server signature checked in constant time, `OPEN SERVICE`, one redis PING answered by
 * `+PONG`, close. Without --ngp (or with --plain): connect, PING/PONG, close, so a relay
 * without NGP/1 (HAProxy alone) is driven by the same client.
 *
 * The salted password and the keys derived from it alone (ClientKey, StoredKey, ServerKey)
 * are cached per (salt, iterations), as RFC 5802 section 5.1 allows: PBKDF2 runs once, a
 * session costs two HMACs. One session (the warm-up, not counted) fills the cache before
 * the timed window.
 *
 * --conns sessions at a time on one epoll loop for --seconds; then no new session starts
 * and those in flight finish, each bounded by --timeout (default 5 s) from its start. Every
 * reply is bounded (a line at most MAXLINE bytes plus CRLF, printable ASCII) and checked;
 * anything else ends the session as an error, counted by kind, with up to three samples.
 * After an error the slot waits ERROR_BACKOFF_NS before it connects again (no busy loop on a
 * refused port or an exhausted descriptor table).
 *
 * Prints one JSON line with the keys of `loadgen.py connrate` (connections, seconds, rate,
 * p50_ms, p99_ms, errors, error_sample, concurrency, window_s, gen_cpu_pct) and its own
 * (client, error_kinds, warmup).
 *
 * Build: gcc -std=c11 -O2 -Wall -Wextra -Werror ngp_connrate.c -o ngp_connrate -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* The gateway's line bound (MAXLINE in the greeting), terminator excluded. */
enum { MAXLINE = 1024, LINEBUF = MAXLINE + 2, OUTBUF = 2048, KEYLEN = 32 };
/* Bounds on what a server may make us do. */
enum { MAX_SALT = 128, MAX_ITERATIONS = 1000000, CACHE_SLOTS = 8, MAX_CONNS = 10000 };
/* Back-off of a slot after an error, and the period of the timeout scan. */
static const uint64_t ERROR_BACKOFF_NS = 10000000ULL;
static const uint64_t SCAN_NS = 10000000ULL;

static const char PING[] = "*1\r\n$4\r\nPING\r\n";
static const char PONG[] = "+PONG\r\n";
#define PING_LEN (sizeof PING - 1)
#define PONG_LEN (sizeof PONG - 1)

enum state { S_IDLE, S_GREETING, S_CONT, S_AUTH_OK, S_OPEN, S_PONG };

enum kind { K_CONNECT, K_CLOSED, K_TIMEOUT, K_REFUSED, K_PROTOCOL, K_SIGNATURE, K_RESOURCES,
            K_COUNT };
static const char *const KIND_NAMES[K_COUNT] = {
    "connect", "closed", "timeout", "refused", "protocol", "signature", "resources"};

struct session {
    int fd;
    enum state state;
    int connected;       /* a byte came or went: a failure is no longer a connect failure */
    uint64_t started;    /* monotonic ns */
    uint64_t deadline;   /* monotonic ns: the session fails at this time */
    uint64_t wake;       /* monotonic ns: an idle slot starts no session before this */
    size_t in_len;
    char in[LINEBUF];
    size_t out_off, out_len;
    char out[OUTBUF];
    size_t bare_len;     /* client-first-message-bare */
    char bare[1024];
    size_t nonce_len;    /* our client nonce (base64 of 18 random bytes) */
    char nonce[32];
    unsigned char expected[KEYLEN]; /* the server signature we expect */
};

struct keys {
    int used;
    size_t salt_len;
    unsigned char salt[MAX_SALT];
    unsigned long iterations;
    unsigned char client_key[KEYLEN];
    EVP_MAC_CTX *stored; /* HMAC keyed with StoredKey */
    EVP_MAC_CTX *server; /* HMAC keyed with ServerKey */
};

struct client {
    /* options */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int ngp;
    int echo; /* --echo: the service echoes the PING back */
    char service[65];
    char user[1024];     /* escaped as RFC 5802 requires */
    unsigned char password[1024];
    size_t password_len;
    int conns;
    double seconds;
    uint64_t timeout_ns;
    long max_conns;
    /* state */
    int epfd;
    struct session *sessions;
    int active;          /* sessions with a socket */
    int starting;        /* new sessions may start */
    long start_budget;   /* sessions that may still start (the warm-up: 1) */
    EVP_MAC *hmac;
    struct keys cache[CACHE_SLOTS];
    unsigned next_slot;
    /* results */
    long successes;
    long errors;
    long kinds[K_COUNT];
    int samples;
    char sample[3][160];
    uint32_t *latencies; /* microseconds */
    long latency_cap;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *message) {
    fprintf(stderr, "ngp_connrate: %s\n", message);
    exit(2);
}

/* -- base64 (standard alphabet, padded) ------------------------------------------------ */

/* Encode n bytes at src into dst (room for 4 * ceil(n / 3) + 1); returns the length. */
static size_t b64_encode(char *dst, const unsigned char *src, size_t n) {
    return (size_t)EVP_EncodeBlock((unsigned char *)dst, src, (int)n);
}

static int b64_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* Decode strictly valid base64 (length a multiple of 4, padding only at the end) into dst
 * (room for 3 * n / 4); returns the length, or -1. */
static long b64_decode(unsigned char *dst, const char *src, size_t n) {
    if (n == 0 || n % 4 != 0)
        return -1;
    size_t pad = src[n - 1] == '=' ? (src[n - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < n - pad; i++)
        if (!b64_char(src[i]))
            return -1;
    int got = EVP_DecodeBlock(dst, (const unsigned char *)src, (int)n);
    if (got < 0 || (size_t)got != 3 * n / 4)
        return -1;
    return (long)((size_t)got - pad);
}

/* -- results ----------------------------------------------------------------------------- */

/* Keep a sample of the first errors: KIND: what, with the server's line (printable ASCII,
 * quotes and backslashes dropped so it needs no escaping in JSON) when given. */
static void note_error(struct client *c, enum kind kind, const char *what, const char *line,
                       size_t line_len) {
    c->errors++;
    c->kinds[kind]++;
    if (c->samples >= 3)
        return;
    char *out = c->sample[c->samples++];
    int n = snprintf(out, 160, "%s: %s", KIND_NAMES[kind], what);
    if (line == NULL || line_len == 0 || n < 0 || n >= 150)
        return;
    size_t at = (size_t)n;
    out[at++] = ' ';
    for (size_t i = 0; i < line_len && at < 158; i++)
        if (line[i] >= 0x20 && line[i] < 0x7f && line[i] != '"' && line[i] != '\\')
            out[at++] = line[i];
    out[at] = '\0';
}

/* -- SCRAM ------------------------------------------------------------------------------- */

static EVP_MAC_CTX *keyed_hmac(struct client *c, const unsigned char *key) {
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(c->hmac);
    if (ctx == NULL || !EVP_MAC_init(ctx, key, KEYLEN, params))
        die("cannot set up HMAC-SHA-256");
    return ctx;
}

/* HMAC with a keyed context (the key kept, the state reset). */
static void hmac_with(EVP_MAC_CTX *ctx, const void *data, size_t n, unsigned char *out) {
    size_t len = 0;
    if (!EVP_MAC_init(ctx, NULL, 0, NULL) || !EVP_MAC_update(ctx, data, n) ||
        !EVP_MAC_final(ctx, out, &len, KEYLEN) || len != KEYLEN)
        die("HMAC failed");
}

/* The keys for (salt, iterations): from the cache, or derived once (PBKDF2). */
static struct keys *keys_for(struct client *c, const unsigned char *salt, size_t salt_len,
                             unsigned long iterations) {
    for (int i = 0; i < CACHE_SLOTS; i++) {
        struct keys *k = &c->cache[i];
        if (k->used && k->iterations == iterations && k->salt_len == salt_len &&
            memcmp(k->salt, salt, salt_len) == 0)
            return k;
    }
    struct keys *k = &c->cache[c->next_slot++ % CACHE_SLOTS];
    EVP_MAC_CTX_free(k->stored);
    EVP_MAC_CTX_free(k->server);
    unsigned char salted[KEYLEN], stored_key[KEYLEN], server_key[KEYLEN];
    if (!PKCS5_PBKDF2_HMAC((const char *)c->password, (int)c->password_len, salt,
                           (int)salt_len, (int)iterations, EVP_sha256(), KEYLEN, salted))
        die("PBKDF2 failed");
    EVP_MAC_CTX *by_salted = keyed_hmac(c, salted);
    hmac_with(by_salted, "Client Key", 10, k->client_key);
    hmac_with(by_salted, "Server Key", 10, server_key);
    EVP_MAC_CTX_free(by_salted);
    unsigned int len = 0;
    if (!EVP_Digest(k->client_key, KEYLEN, stored_key, &len, EVP_sha256(), NULL))
        die("SHA-256 failed");
    k->stored = keyed_hmac(c, stored_key);
    k->server = keyed_hmac(c, server_key);
    OPENSSL_cleanse(salted, sizeof salted);
    k->used = 1;
    k->salt_len = salt_len;
    memcpy(k->salt, salt, salt_len);
    k->iterations = iterations;
    return k;
}

/* Queue bytes to send; 0 if they do not fit. */
static int queue(struct session *s, const void *data, size_t n) {
    if (s->out_len + n > OUTBUF)
        return 0;
    memcpy(s->out + s->out_len, data, n);
    s->out_len += n;
    return 1;
}

/* Queue PREFIX base64(data) CRLF. */
static int queue_b64_line(struct session *s, const char *prefix, const char *data, size_t n) {
    char line[OUTBUF];
    size_t plen = strlen(prefix);
    if (plen + 4 * ((n + 2) / 3) + 3 > sizeof line)
        return 0;
    memcpy(line, prefix, plen);
    size_t len = plen + b64_encode(line + plen, (const unsigned char *)data, n);
    memcpy(line + len, "\r\n", 2);
    return queue(s, line, len + 2);
}

static int client_first(struct client *c, struct session *s) {
    unsigned char raw[18];
    if (RAND_bytes(raw, sizeof raw) != 1)
        die("RAND_bytes failed");
    s->nonce_len = b64_encode(s->nonce, raw, sizeof raw);
    int n = snprintf(s->bare, sizeof s->bare, "n=%s,r=%s", c->user, s->nonce);
    if (n < 0 || (size_t)n >= sizeof s->bare)
        return 0;
    s->bare_len = (size_t)n;
    char first[sizeof s->bare + 3];
    memcpy(first, "n,,", 3);
    memcpy(first + 3, s->bare, s->bare_len);
    return queue_b64_line(s, "AUTH SCRAM-SHA-256 ", first, s->bare_len + 3);
}

/* Answer the server-first-message; a non-NULL return is the reason it is refused. */
static const char *client_final(struct client *c, struct session *s, const char *first,
                                size_t first_len) {
    /* r=<nonce>,s=<salt>,i=<iterations>[,extensions] */
    if (first_len < 2 || memcmp(first, "r=", 2) != 0)
        return "server-first has no nonce";
    const char *nonce = first + 2;
    const char *comma = memchr(nonce, ',', first_len - 2);
    if (comma == NULL)
        return "server-first has no salt";
    size_t nonce_len = (size_t)(comma - nonce);
    if (nonce_len < s->nonce_len || memcmp(nonce, s->nonce, s->nonce_len) != 0)
        return "server nonce does not extend ours";
    const char *end = first + first_len;
    const char *salt64 = comma + 1;
    if (end - salt64 < 2 || memcmp(salt64, "s=", 2) != 0)
        return "server-first has no salt";
    salt64 += 2;
    comma = memchr(salt64, ',', (size_t)(end - salt64));
    if (comma == NULL || comma - salt64 > 4 * MAX_SALT / 3 + 4)
        return "bad salt";
    unsigned char salt[MAX_SALT + 3];
    long salt_len = b64_decode(salt, salt64, (size_t)(comma - salt64));
    if (salt_len <= 0 || salt_len > MAX_SALT)
        return "bad salt";
    const char *iter = comma + 1;
    if (end - iter < 3 || memcmp(iter, "i=", 2) != 0)
        return "server-first has no iteration count";
    unsigned long iterations = 0;
    const char *p = iter + 2;
    for (; p < end && *p != ','; p++) {
        if (*p < '0' || *p > '9' || iterations > MAX_ITERATIONS)
            return "bad iteration count";
        iterations = iterations * 10 + (unsigned long)(*p - '0');
    }
    if (p == iter + 2 || iterations == 0 || iterations > MAX_ITERATIONS)
        return "bad iteration count";

    struct keys *k = keys_for(c, salt, (size_t)salt_len, iterations);
    char final[OUTBUF];
    int n = snprintf(final, sizeof final, "c=biws,r=%.*s", (int)nonce_len, nonce);
    if (n < 0 || (size_t)n >= sizeof final)
        return "server nonce too long";
    size_t without_proof = (size_t)n;
    char auth[3 * OUTBUF];
    size_t alen = s->bare_len + 1 + first_len + 1 + without_proof;
    if (alen > sizeof auth)
        return "server-first too long";
    memcpy(auth, s->bare, s->bare_len);
    auth[s->bare_len] = ',';
    memcpy(auth + s->bare_len + 1, first, first_len);
    auth[s->bare_len + 1 + first_len] = ',';
    memcpy(auth + s->bare_len + 2 + first_len, final, without_proof);
    unsigned char signature[KEYLEN], proof[KEYLEN];
    hmac_with(k->stored, auth, alen, signature);
    for (int i = 0; i < KEYLEN; i++)
        proof[i] = k->client_key[i] ^ signature[i];
    hmac_with(k->server, auth, alen, s->expected);
    if (without_proof + 3 + 45 > sizeof final)
        return "server nonce too long";
    memcpy(final + without_proof, ",p=", 3);
    size_t flen = without_proof + 3 + b64_encode(final + without_proof + 3, proof, KEYLEN);
    if (!queue_b64_line(s, "CONT ", final, flen))
        return "server nonce too long";
    return NULL;
}

/* Check OK <base64 of v=<base64 signature>>; a non-NULL return is the reason it fails. */
static const char *check_verifier(struct session *s, const char *b64, size_t n, enum kind *kind) {
    unsigned char text[MAXLINE];
    long len = b64_decode(text, b64, n);
    *kind = K_PROTOCOL;
    if (len < 3 || memcmp(text, "v=", 2) != 0)
        return "OK without a server signature";
    unsigned char signature[MAXLINE];
    long slen = b64_decode(signature, (const char *)text + 2, (size_t)len - 2);
    *kind = K_SIGNATURE;
    if (slen != KEYLEN || CRYPTO_memcmp(signature, s->expected, KEYLEN) != 0)
        return "server signature does not verify";
    return NULL;
}

/* -- sessions ---------------------------------------------------------------------------- */

static void end_session(struct client *c, struct session *s) {
    close(s->fd);
    s->fd = -1;
    s->state = S_IDLE;
    c->active--;
}

static void fail(struct client *c, struct session *s, enum kind kind, const char *what,
                 const char *line, size_t line_len) {
    if (kind == K_CLOSED && !s->connected)
        kind = K_CONNECT;
    note_error(c, kind, what, line, line_len);
    if (s->fd >= 0)
        end_session(c, s);
    s->wake = now_ns() + ERROR_BACKOFF_NS;
}

static void succeed(struct client *c, struct session *s) {
    uint64_t took = (now_ns() - s->started) / 1000;
    if (c->successes < c->latency_cap)
        c->latencies[c->successes] = took > UINT32_MAX ? UINT32_MAX : (uint32_t)took;
    c->successes++;
    end_session(c, s);
    s->wake = 0;
}

/* Send what is queued; EPOLLOUT is asked for only while something is left. 0: failed. */
static int flush(struct client *c, struct session *s) {
    while (s->out_off < s->out_len) {
        ssize_t n = send(s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = s};
            if (epoll_ctl(c->epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0)
                die("epoll_ctl");
            return 1;
        }
        if (n < 0) {
            fail(c, s, K_CLOSED, strerror(errno), NULL, 0);
            return 0;
        }
        s->connected = 1;
        s->out_off += (size_t)n;
    }
    s->out_off = s->out_len = 0;
    return 1;
}

static int starts_with(const char *line, size_t n, const char *prefix) {
    size_t p = strlen(prefix);
    return n >= p && memcmp(line, prefix, p) == 0;
}

/* Whether the greeting offers SCRAM-SHA-256 in its AUTH= list. */
static int offers_scram(const char *line, size_t n) {
    if (!starts_with(line, n, "NETGUARD/1 "))
        return 0;
    for (size_t i = 0; i + 6 <= n; i++) {
        if (line[i] != ' ' || memcmp(line + i + 1, "AUTH=", 5) != 0)
            continue;
        const char *p = line + i + 6, *end = line + n;
        while (p < end && *p != ' ') {
            const char *q = p;
            while (q < end && *q != ',' && *q != ' ')
                q++;
            if (q - p == 13 && memcmp(p, "SCRAM-SHA-256", 13) == 0)
                return 1;
            p = q < end && *q == ',' ? q + 1 : q;
        }
        return 0;
    }
    return 0;
}

/* Handle one line from the server (CRLF removed); 0 if the session ended. */
static int on_line(struct client *c, struct session *s, const char *line, size_t n) {
    enum kind kind = K_PROTOCOL;
    const char *why = NULL;
    if (starts_with(line, n, "ERR ")) {
        fail(c, s, K_REFUSED, "server answered", line, n);
        return 0;
    }
    switch (s->state) {
    case S_GREETING:
        if (!offers_scram(line, n))
            why = "not a greeting offering SCRAM-SHA-256";
        else if (!client_first(c, s))
            why = "user name too long";
        else
            s->state = S_CONT;
        break;
    case S_CONT: {
        unsigned char first[MAXLINE];
        long len = starts_with(line, n, "CONT ") ? b64_decode(first, line + 5, n - 5) : -1;
        if (len < 0)
            why = "expected CONT <base64>";
        else if ((why = client_final(c, s, (const char *)first, (size_t)len)) == NULL)
            s->state = S_AUTH_OK;
        break;
    }
    case S_AUTH_OK:
        if (!starts_with(line, n, "OK "))
            why = "expected OK <base64>";
        else if ((why = check_verifier(s, line + 3, n - 3, &kind)) == NULL) {
            char open[80];
            int len = snprintf(open, sizeof open, "OPEN %s\r\n", c->service);
            queue(s, open, (size_t)len);
            s->state = S_OPEN;
        }
        break;
    case S_OPEN: {
        size_t slen = strlen(c->service);
        if (n != 8 + slen || !starts_with(line, n, "OK OPEN ") ||
            memcmp(line + 8, c->service, slen) != 0)
            why = "expected OK OPEN";
        else {
            queue(s, PING, PING_LEN);
            s->state = S_PONG;
        }
        break;
    }
    default:
        why = "unexpected line";
    }
    if (why != NULL) {
        fail(c, s, kind, why, line, n);
        return 0;
    }
    return flush(c, s);
}

/* Raw bytes after OK OPEN (or after connect, plain): exactly +PONG CRLF, or with --echo the
 * PING itself, as an echo service returns it. */
static void on_raw(struct client *c, struct session *s) {
    const char *want = c->echo ? PING : PONG;
    size_t want_len = c->echo ? PING_LEN : PONG_LEN;
    if (s->in_len > want_len || memcmp(s->in, want, s->in_len) != 0)
        fail(c, s, K_PROTOCOL, c->echo ? "expected the PING echoed" : "expected +PONG", s->in,
             s->in_len);
    else if (s->in_len == want_len)
        succeed(c, s);
}

static void on_readable(struct client *c, struct session *s) {
    ssize_t n;
    do
        n = recv(s->fd, s->in + s->in_len, LINEBUF - s->in_len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n < 0) {
        fail(c, s, K_CLOSED, strerror(errno), NULL, 0);
        return;
    }
    if (n == 0) {
        fail(c, s, K_CLOSED, "closed by the server", s->in, s->in_len);
        return;
    }
    s->connected = 1;
    s->in_len += (size_t)n;
    while (s->state != S_PONG) {
        char *lf = memchr(s->in, '\n', s->in_len);
        if (lf == NULL) {
            if (s->in_len == LINEBUF)
                fail(c, s, K_PROTOCOL, "line too long", s->in, 60);
            return;
        }
        if (lf == s->in || lf[-1] != '\r') {
            fail(c, s, K_PROTOCOL, "line not ended by CRLF", s->in, (size_t)(lf - s->in));
            return;
        }
        size_t len = (size_t)(lf - 1 - s->in);
        for (size_t i = 0; i < len; i++)
            if (s->in[i] < 0x20 || s->in[i] > 0x7e) {
                fail(c, s, K_PROTOCOL, "line not printable ASCII", NULL, 0);
                return;
            }
        char line[LINEBUF];
        memcpy(line, s->in, len);
        size_t rest = s->in_len - (len + 2);
        memmove(s->in, lf + 1, rest);
        s->in_len = rest;
        if (!on_line(c, s, line, len))
            return;
        if (s->state != S_PONG && s->in_len == 0)
            return;
    }
    on_raw(c, s);
}

static void start_session(struct client *c, struct session *s, uint64_t now) {
    c->start_budget--;
    s->started = now;
    s->deadline = now + c->timeout_ns;
    s->in_len = s->out_off = s->out_len = 0;
    s->connected = 0;
    int fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the slot backs off and tries again. */
        s->fd = -1;
        fail(c, s, K_RESOURCES, strerror(errno), NULL, 0);
        return;
    }
    s->fd = fd;
    c->active++;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* A non-blocking connect interrupted by a signal goes on asynchronously. */
    if (connect(fd, (struct sockaddr *)&c->addr, c->addr_len) < 0 && errno != EINPROGRESS &&
        errno != EINTR) {
        fail(c, s, K_CONNECT, strerror(errno), NULL, 0);
        return;
    }
    uint32_t events = EPOLLIN | EPOLLRDHUP;
    if (c->ngp)
        s->state = S_GREETING;
    else {
        s->state = S_PONG;
        queue(s, PING, PING_LEN);
        events |= EPOLLOUT; /* the PING goes out once the connection is up */
    }
    struct epoll_event ev = {.events = events, .data.ptr = s};
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
}

static void on_event(struct client *c, struct session *s, uint32_t events) {
    if (s->fd < 0)
        return;
    if (events & EPOLLERR) {
        int error = 0;
        socklen_t len = sizeof error;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &error, &len);
        fail(c, s, K_CLOSED, strerror(error ? error : ECONNRESET), NULL, 0);
        return;
    }
    if ((events & EPOLLOUT) && s->out_len > s->out_off) {
        if (!flush(c, s))
            return;
        if (s->out_off == s->out_len) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
            if (epoll_ctl(c->epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0)
                die("epoll_ctl");
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
        on_readable(c, s);
}

/* Time out sessions past their deadline and start sessions in idle slots. */
static void scan(struct client *c, uint64_t now) {
    for (int i = 0; i < c->conns; i++) {
        struct session *s = &c->sessions[i];
        if (s->fd >= 0 && now >= s->deadline)
            fail(c, s, K_TIMEOUT, "no answer in time", NULL, 0);
        if (s->fd < 0 && c->starting && c->start_budget > 0 && now >= s->wake &&
            c->successes < c->max_conns)
            start_session(c, s, now);
    }
}

/* Run sessions until `until` (monotonic ns), then let those in flight end. */
static void run(struct client *c, uint64_t until) {
    struct epoll_event events[256];
    uint64_t next_scan = 0;
    c->starting = 1;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= until || c->start_budget <= 0 || c->successes >= c->max_conns)
            c->starting = 0;
        if (!c->starting && c->active == 0)
            return;
        if (now >= next_scan) {
            scan(c, now);
            next_scan = now + SCAN_NS;
        }
        uint64_t wait = next_scan - now;
        if (c->starting && until > now && until - now < wait)
            wait = until - now;
        int ready = epoll_wait(c->epfd, events, 256, (int)(wait / 1000000ULL) + 1);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0)
            die("epoll_wait");
        for (int i = 0; i < ready; i++) {
            struct session *s = events[i].data.ptr;
            on_event(c, s, events[i].events);
            /* A finished session's slot starts the next one at once. */
            if (s->fd < 0 && c->starting && c->start_budget > 0 && s->wake == 0 &&
                c->successes < c->max_conns && now_ns() < until)
                start_session(c, s, now_ns());
        }
    }
}

/* -- options ----------------------------------------------------------------------------- */

static void usage(void) {
    fputs("usage: ngp_connrate [--host ADDR] --port PORT [--ngp SERVICE:USER:PASSWORD_FILE | "
          "--plain] [--echo] [connrate] [--conns C] [--seconds S] [--timeout S] [--max-conns N]\n",
          stderr);
    exit(2);
}

static long number(const char *text, long low, long high) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || end == text || v < low || v > high)
        usage();
    return v;
}

static double seconds_arg(const char *text) {
    char *end;
    double v = strtod(text, &end);
    if (*end || end == text || !(v > 0 && v <= 86400))
        usage();
    return v;
}

/* SERVICE:USER:PASSWORD_FILE, as loadgen.py takes it (the password stays off the command
 * line). */
static void parse_ngp(struct client *c, const char *spec) {
    char copy[4096];
    if (strlen(spec) >= sizeof copy)
        die("--ngp too long");
    strcpy(copy, spec);
    char *service = copy, *user = strchr(service, ':');
    if (user == NULL)
        die("--ngp wants SERVICE:USER:PASSWORD_FILE");
    *user++ = '\0';
    char *path = strchr(user, ':');
    if (path == NULL)
        die("--ngp wants SERVICE:USER:PASSWORD_FILE");
    *path++ = '\0';
    if (strchr(path, ':') != NULL)
        die("--ngp: a CAFILE (TLS) is not supported by this client: use loadgen.py");
    size_t slen = strlen(service);
    if (slen == 0 || slen >= sizeof c->service)
        die("--ngp: bad service name");
    for (size_t i = 0; i < slen; i++)
        if (service[i] <= 0x20 || service[i] >= 0x7f)
            die("--ngp: bad service name");
    strcpy(c->service, service);
    size_t at = 0, ulen = strlen(user);
    if (ulen == 0 || ulen > 255)
        die("--ngp: bad user name");
    for (size_t i = 0; i < ulen; i++) { /* RFC 5802: = and , escaped */
        const char *piece = user[i] == '=' ? "=3D" : user[i] == ',' ? "=2C" : NULL;
        if (piece != NULL) {
            memcpy(c->user + at, piece, 3);
            at += 3;
        } else
            c->user[at++] = user[i];
    }
    c->user[at] = '\0';
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die("--ngp: cannot read the password file");
    size_t n = fread(c->password, 1, sizeof c->password, f);
    int longer = fgetc(f) != EOF;
    fclose(f);
    if (longer)
        die("--ngp: password file too long");
    while (n > 0 && (c->password[n - 1] == '\n' || c->password[n - 1] == '\r'))
        n--;
    c->password_len = n;
    c->ngp = 1;
}

static void parse_args(struct client *c, int argc, char **argv) {
    const char *host = "127.0.0.1";
    long port = -1;
    int plain = 0;
    c->conns = 16;
    c->seconds = 3.0;
    c->timeout_ns = 5000000000ULL;
    c->max_conns = 100000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "connrate") == 0)
            continue;
        if (strcmp(a, "--plain") == 0) {
            plain = 1;
            continue;
        }
        if (strcmp(a, "--echo") == 0) {
            c->echo = 1;
            continue;
        }
        if (v == NULL)
            usage();
        i++;
        if (strcmp(a, "--host") == 0)
            host = v;
        else if (strcmp(a, "--port") == 0)
            port = number(v, 1, 65535);
        else if (strcmp(a, "--ngp") == 0)
            parse_ngp(c, v);
        else if (strcmp(a, "--conns") == 0)
            c->conns = (int)number(v, 1, MAX_CONNS);
        else if (strcmp(a, "--seconds") == 0)
            c->seconds = seconds_arg(v);
        else if (strcmp(a, "--timeout") == 0)
            c->timeout_ns = (uint64_t)(seconds_arg(v) * 1e9);
        else if (strcmp(a, "--max-conns") == 0)
            c->max_conns = number(v, 1, 100000000);
        else
            usage();
    }
    if (port < 0 || (plain && c->ngp))
        usage();
    memset(&c->addr, 0, sizeof c->addr);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&c->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&c->addr;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        c->addr_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        c->addr_len = sizeof *v6;
    } else
        die("--host must be an IPv4 or IPv6 address");
}

static int by_value(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double percentile_ms(const uint32_t *sorted, long n, double fraction) {
    if (n == 0)
        return 0.0;
    long index = (long)(fraction * (double)n);
    return sorted[index < n ? index : n - 1] / 1000.0;
}

int main(int argc, char **argv) {
    static struct client c;
    parse_args(&c, argc, argv);
    signal(SIGPIPE, SIG_IGN);
    /* Room for every session's socket (the soft limit raised up to the hard one). */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < (rlim_t)c.conns + 64) {
        files.rlim_cur = files.rlim_max < (rlim_t)c.conns + 64 ? files.rlim_max
                                                               : (rlim_t)c.conns + 64;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    c.hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (c.hmac == NULL)
        die("no HMAC in libcrypto");
    c.sessions = calloc((size_t)c.conns, sizeof *c.sessions);
    c.latency_cap = c.max_conns + c.conns;
    if (c.latency_cap > 10000000)
        c.latency_cap = 10000000;
    c.latencies = malloc((size_t)c.latency_cap * sizeof *c.latencies);
    c.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (c.sessions == NULL || c.latencies == NULL || c.epfd < 0)
        die("out of memory or descriptors");
    for (int i = 0; i < c.conns; i++)
        c.sessions[i].fd = -1;

    /* The warm-up: one session (fills the key cache), not counted. */
    int saved = c.conns;
    c.conns = 1;
    c.start_budget = 1;
    run(&c, now_ns() + c.timeout_ns);
    c.conns = saved;
    char warmup[160];
    snprintf(warmup, sizeof warmup, "%s", c.successes == 1 ? "ok" : c.sample[0]);
    c.successes = c.errors = 0;
    c.samples = 0;
    memset(c.kinds, 0, sizeof c.kinds);
    for (int i = 0; i < c.conns; i++)
        c.sessions[i].wake = 0;

    double cpu0 = cpu_seconds();
    uint64_t t0 = now_ns();
    c.start_budget = LONG_MAX;
    run(&c, t0 + (uint64_t)(c.seconds * 1e9));
    double seconds = (double)(now_ns() - t0) / 1e9;
    double cpu = cpu_seconds() - cpu0;

    long stored = c.successes < c.latency_cap ? c.successes : c.latency_cap;
    qsort(c.latencies, (size_t)stored, sizeof *c.latencies, by_value);
    printf("{\"client\": \"c\", \"connections\": %ld, \"seconds\": %.6f, \"rate\": %.3f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"errors\": %ld, \"error_sample\": [",
           c.successes, seconds, seconds > 0 ? (double)c.successes / seconds : 0.0,
           percentile_ms(c.latencies, stored, 0.5), percentile_ms(c.latencies, stored, 0.99),
           c.errors);
    for (int i = 0; i < c.samples; i++)
        printf("%s\"%s\"", i ? ", " : "", c.sample[i]);
    printf("], \"error_kinds\": {");
    for (int k = 0; k < K_COUNT; k++)
        printf("%s\"%s\": %ld", k ? ", " : "", KIND_NAMES[k], c.kinds[k]);
    printf("}, \"warmup\": \"%s\", \"concurrency\": %d, \"window_s\": %.6f, "
           "\"gen_cpu_pct\": %.3f, \"cpu_s\": %.6f}\n",
           warmup, c.conns, seconds, seconds > 0 ? 100.0 * cpu / seconds : 0.0, cpu);
    return 0;
}
