/*
 * pam_turnstile: the PAM session module of turnstiled.
 *
 * pam_sm_open_session derives the session facts (the way logind does),
 * sends them to turnstiled over its control socket, waits until the user's
 * service manager is ready, and exports the environment the daemon returns
 * (XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS). The connection then stays
 * open for the whole session: the daemon ends the session when it sees EOF,
 * which happens at pam_close_session, at pam_end, or when the login process
 * dies. The wire format is described in turnstiled/protocol.py.
 *
 * A daemon that is restarting is waited for, within the same timeout: a
 * socket nobody listens on (the daemon died or is being replaced; it
 * leaves its socket in place), or a connection closed before any answer
 * (it died before it registered the session) mean "try again shortly", not
 * "fail the login". No socket at all is waited for only NO_SOCKET_WAIT
 * seconds: the daemon starting at boot, not a system without it.
 *
 * The module is a thin client: no policy, no global mutable state.
 */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <security/pam_ext.h>
#include <security/pam_modules.h>

#define DEFAULT_SOCKET "/run/turnstiled/control.sock"
#define DEFAULT_TIMEOUT 60
#define DATA_KEY "pam_turnstile_fd"
#define MAX_ENV (64u * 1024u)
/* Between attempts to reach a daemon that is restarting. */
#define RETRY_MS 100
#define NO_SOCKET_WAIT 10

enum message {
    MSG_OK_WAIT = 1,
    MSG_OK_DONE = 2,
    MSG_REQ_ENV = 3,
    MSG_ENV = 4,
    MSG_START = 5,
    MSG_ERR = 6,
};

/* The nine strings of the handshake, in the order they are sent. */
enum field {
    F_SERVICE, F_TYPE, F_CLASS, F_DESKTOP, F_SEAT, F_TTY, F_DISPLAY,
    F_RUSER, F_RHOST, NFIELDS
};

static const struct {
    const char *name;
    size_t min, max;
} fields[NFIELDS] = {
    [F_SERVICE] = {"service", 1, 64},
    [F_TYPE] = {"type", 1, 16},
    [F_CLASS] = {"class", 1, 16},
    [F_DESKTOP] = {"desktop", 0, 64},
    [F_SEAT] = {"seat", 0, 32},
    [F_TTY] = {"tty", 0, 16},
    [F_DISPLAY] = {"display", 0, 16},
    [F_RUSER] = {"remote user", 0, 256},
    [F_RHOST] = {"remote host", 0, 256},
};

/* START, uid, vtnr, remote, then each string as size_t length + bytes. */
#define HANDSHAKE_MAX \
    (1 + sizeof(unsigned int) + sizeof(unsigned long) + sizeof(bool) + \
     NFIELDS * sizeof(size_t) + 64 + 16 + 16 + 64 + 32 + 16 + 16 + 256 + 256)

struct options {
    bool debug;
    bool daemon_session; /* `turnstiled`: the daemon's own session */
    const char *klass, *type, *desktop;
    const char *socket_path;
    int timeout;
};

struct facts {
    unsigned int uid;
    unsigned long vtnr;
    bool remote;
    const char *str[NFIELDS]; /* never NULL once derived; "" when unset */
};

static void parse_options(pam_handle_t *pamh, int argc, const char **argv,
                          struct options *opt)
{
    *opt = (struct options){.socket_path = DEFAULT_SOCKET,
                            .timeout = DEFAULT_TIMEOUT};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "debug") == 0) {
            opt->debug = true;
        } else if (strcmp(a, "turnstiled") == 0) {
            opt->daemon_session = true;
        } else if (strncmp(a, "class=", 6) == 0) {
            opt->klass = a + 6;
        } else if (strncmp(a, "type=", 5) == 0) {
            opt->type = a + 5;
        } else if (strncmp(a, "desktop=", 8) == 0) {
            opt->desktop = a + 8;
        } else if (strncmp(a, "socket=", 7) == 0) {
            opt->socket_path = a + 7;
        } else if (strncmp(a, "timeout=", 8) == 0) {
            char *end;
            errno = 0;
            long t = strtol(a + 8, &end, 10);
            if (errno || end == a + 8 || *end || t <= 0 || t > INT_MAX / 1000) {
                pam_syslog(pamh, LOG_ERR,
                           "bad argument '%s' (want whole seconds > 0); using %d",
                           a, DEFAULT_TIMEOUT);
            } else {
                opt->timeout = (int)t;
            }
        } else {
            pam_syslog(pamh, LOG_ERR, "unknown argument '%s' ignored", a);
        }
    }
}

/* Empty values count as unset, as in logind. */
static const char *nonempty(const char *s)
{
    return s && *s ? s : NULL;
}

/* PAM environment first, then the process environment, then a fallback. */
static const char *session_var(pam_handle_t *pamh, const char *name,
                               const char *fallback)
{
    const char *v = nonempty(pam_getenv(pamh, name));
    if (!v)
        v = nonempty(getenv(name));
    return v ? v : nonempty(fallback);
}

static const char *string_item(pam_handle_t *pamh, int type)
{
    const void *v = NULL;
    if (pam_get_item(pamh, type, &v) != PAM_SUCCESS)
        return NULL;
    return nonempty(v);
}

/* Decimal number with nothing around it; false for anything else. */
static bool parse_ulong(const char *s, unsigned long *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

static bool tail_is(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && strncasecmp(s + n - k, suffix, k) == 0;
}

/* logind's is_localhost(): RFC 6761 localhost names plus "localdomain",
 * with or without a trailing dot. */
static bool is_localhost(const char *host)
{
    size_t n = strlen(host);
    if (n && host[n - 1] == '.')
        n--;
    return (n == 9 && tail_is(host, n, "localhost")) ||
           (n == 21 && tail_is(host, n, "localhost.localdomain")) ||
           tail_is(host, n, ".localhost") ||
           tail_is(host, n, ".localhost.localdomain");
}

static int lookup_uid(pam_handle_t *pamh, const char *user, unsigned int *uid)
{
    long hint = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t size = hint > 0 ? (size_t)hint : 16384;
    for (;;) {
        char *buf = malloc(size);
        if (!buf) {
            pam_syslog(pamh, LOG_CRIT, "out of memory");
            return PAM_BUF_ERR;
        }
        struct passwd pw, *found = NULL;
        int err = getpwnam_r(user, &pw, buf, size, &found);
        if (found)
            *uid = pw.pw_uid;
        free(buf);
        if (found)
            return PAM_SUCCESS;
        /* An entry with long fields needs a bigger buffer; bound the growth. */
        if (err == ERANGE && size < 1024 * 1024) {
            size *= 2;
            continue;
        }
        if (err)
            pam_syslog(pamh, LOG_ERR, "cannot look up user '%s': %s", user,
                       strerror(err));
        else
            pam_syslog(pamh, LOG_ERR, "user '%s' is not in the password database",
                       user);
        return PAM_SESSION_ERR;
    }
}

/* The session facts, as logind derives them (man/pam_turnstile.8.scd says how). */
static int derive_facts(pam_handle_t *pamh, const struct options *opt,
                        struct facts *f)
{
    const char *user = NULL;
    if (pam_get_user(pamh, &user, NULL) != PAM_SUCCESS || !nonempty(user)) {
        pam_syslog(pamh, LOG_ERR, "cannot get the PAM user");
        return PAM_SESSION_ERR;
    }
    int r = lookup_uid(pamh, user, &f->uid);
    if (r != PAM_SUCCESS)
        return r;

    const char *service = string_item(pamh, PAM_SERVICE);
    const char *tty = string_item(pamh, PAM_TTY);
    const char *display = string_item(pamh, PAM_XDISPLAY);
    const char *type = session_var(pamh, "XDG_SESSION_TYPE", opt->type);
    const char *klass = session_var(pamh, "XDG_SESSION_CLASS", opt->klass);
    const char *desktop = session_var(pamh, "XDG_SESSION_DESKTOP", opt->desktop);
    const char *seat = session_var(pamh, "XDG_SEAT", NULL);
    const char *vtnr_s = session_var(pamh, "XDG_VTNR", NULL);

    f->vtnr = 0;
    if (vtnr_s && !parse_ulong(vtnr_s, &f->vtnr)) {
        pam_syslog(pamh, LOG_WARNING, "ignoring XDG_VTNR='%s': not a number", vtnr_s);
        f->vtnr = 0;
    }

    if (tty && strchr(tty, ':')) {
        /* Some display managers put the X display into PAM_TTY. */
        if (!display)
            display = tty;
        tty = NULL;
    } else if (tty && strcmp(tty, "cron") == 0) {
        /* cron sets PAM_TTY only because some modules want one. */
        type = "unspecified";
        klass = "background";
        tty = NULL;
    } else if (tty && strcmp(tty, "ssh") == 0) {
        /* sshd sets PAM_TTY to "ssh" before it knows whether a pty follows. */
        type = "tty";
        klass = "user";
        tty = NULL;
    } else if (tty && strncmp(tty, "/dev/", 5) == 0) {
        tty = nonempty(tty + 5);
    }

    /* A virtual console names its VT, and VTs belong to seat0. An X display
     * keeps XDG_VTNR: asking the X server for its tty is not worth it here. */
    unsigned long n;
    if (tty && strncmp(tty, "tty", 3) == 0 && parse_ulong(tty + 3, &n) && n > 0) {
        f->vtnr = n;
        if (!seat)
            seat = "seat0";
    }
    if (seat && strcmp(seat, "seat0") != 0)
        f->vtnr = 0;

    if (!type)
        type = display ? "x11" : tty ? "tty" : "unspecified";
    if (!klass)
        klass = strcmp(type, "unspecified") == 0 ? "background" : "user";

    const char *rhost = string_item(pamh, PAM_RHOST);
    f->remote = rhost && !is_localhost(rhost);

    const char *s[NFIELDS] = {
        [F_SERVICE] = service, [F_TYPE] = type, [F_CLASS] = klass,
        [F_DESKTOP] = desktop, [F_SEAT] = seat, [F_TTY] = tty,
        [F_DISPLAY] = display, [F_RUSER] = string_item(pamh, PAM_RUSER),
        [F_RHOST] = rhost,
    };
    /* The daemon drops a handshake with a bad length; say which field here,
     * rather than truncating a value into something it is not. */
    for (int i = 0; i < NFIELDS; i++) {
        f->str[i] = s[i] ? s[i] : "";
        size_t len = strlen(f->str[i]);
        if (len < fields[i].min || len > fields[i].max) {
            pam_syslog(pamh, LOG_ERR,
                       "session %s '%.64s' has length %zu, allowed %zu..%zu",
                       fields[i].name, f->str[i], len, fields[i].min,
                       fields[i].max);
            return PAM_SESSION_ERR;
        }
    }
    return PAM_SUCCESS;
}

/* --- talking to the daemon, all bounded by one deadline --- */

enum io { IO_OK, IO_EOF, IO_TIMEOUT, IO_FAIL };

static struct timespec deadline_in(int seconds)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += seconds;
    return t;
}

/* Milliseconds left, rounded up so poll never spins on a sub-ms rest. */
static int ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ns = (long long)(deadline->tv_sec - now.tv_sec) * 1000000000LL +
                   (deadline->tv_nsec - now.tv_nsec);
    if (ns <= 0)
        return 0;
    long long ms = (ns + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* MSG_NOSIGNAL: a daemon that hung up must not SIGPIPE the login program. */
static enum io send_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? IO_TIMEOUT : IO_FAIL;
        }
        p += n;
        len -= (size_t)n;
    }
    return IO_OK;
}

static enum io recv_all(int fd, void *buf, size_t len,
                        const struct timespec *deadline)
{
    unsigned char *p = buf;
    while (len) {
        int ms = ms_left(deadline);
        if (ms == 0)
            return IO_TIMEOUT;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, ms);
        if (r < 0 && errno != EINTR)
            return IO_FAIL;
        if (r <= 0)
            continue; /* EINTR or time up: the top of the loop decides */
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n == 0)
            return IO_EOF;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return IO_FAIL;
        }
        p += n;
        len -= (size_t)n;
    }
    return IO_OK;
}

/* Logs why an exchange with the daemon failed; errno is that of the failure. */
static int io_failed(pam_handle_t *pamh, const struct options *opt, enum io r,
                     const char *doing)
{
    int err = errno;
    switch (r) {
    case IO_TIMEOUT:
        pam_syslog(pamh, LOG_ERR,
                   "turnstiled did not answer within %d s (%s on %s); giving up",
                   opt->timeout, doing, opt->socket_path);
        break;
    case IO_EOF:
        pam_syslog(pamh, LOG_ERR, "turnstiled closed the connection (%s)", doing);
        break;
    default:
        pam_syslog(pamh, LOG_ERR, "talking to turnstiled failed (%s): %s", doing,
                   strerror(err));
        break;
    }
    return PAM_SESSION_ERR;
}

/* Sleeps RETRY_MS, or what is left of the deadline; false if nothing is. */
static bool pause_before_retry(const struct timespec *deadline)
{
    int ms = ms_left(deadline);
    if (ms == 0)
        return false;
    if (ms > RETRY_MS)
        ms = RETRY_MS;
    struct timespec t = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000L};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
    return true;
}

/* A fd connected to the daemon, or -1 with the reason logged. While the
 * daemon restarts (no socket, or nobody listening on it), tries again
 * until the deadline. */
static int connect_daemon(pam_handle_t *pamh, const struct options *opt,
                          const struct timespec *deadline)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t plen = strlen(opt->socket_path);
    if (plen == 0 || plen >= sizeof(addr.sun_path)) {
        pam_syslog(pamh, LOG_ERR, "socket path '%s' is empty or too long",
                   opt->socket_path);
        return -1;
    }
    memcpy(addr.sun_path, opt->socket_path, plen + 1);

    /* CLOEXEC: the user's shell must not inherit the connection, or the
     * daemon would never see the EOF that ends the session. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        pam_syslog(pamh, LOG_ERR, "cannot create a socket: %s", strerror(errno));
        return -1;
    }
    /* connect() on a Unix socket blocks while the daemon's backlog is full,
     * and send() while its buffer is; bound both by the timeout too. */
    struct timeval tv = {.tv_sec = opt->timeout};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

    int r;
    bool said = false;
    struct timespec no_socket = deadline_in(NO_SOCKET_WAIT);
    for (;;) {
        r = connect(fd, (const struct sockaddr *)&addr, sizeof(addr));
        if (r == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != ENOENT && errno != ECONNREFUSED)
            break;
        int why = errno;
        if (!said && opt->debug)
            pam_syslog(pamh, LOG_DEBUG, "turnstiled is not there (%s); waiting for it",
                       strerror(why));
        said = true;
        const struct timespec *until = deadline;
        if (why == ENOENT && ms_left(&no_socket) < ms_left(deadline))
            until = &no_socket;
        if (!pause_before_retry(until)) {
            errno = why;
            break;
        }
    }
    if (r < 0) {
        if (errno == EAGAIN || errno == ETIMEDOUT)
            pam_syslog(pamh, LOG_ERR,
                       "turnstiled did not accept a connection on %s within %d s",
                       opt->socket_path, opt->timeout);
        else
            pam_syslog(pamh, LOG_ERR,
                       "turnstiled is not running (cannot connect to %s: %s)",
                       opt->socket_path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static size_t put(unsigned char *buf, size_t at, const void *data, size_t len)
{
    memcpy(buf + at, data, len);
    return at + len;
}

static enum io send_handshake(int fd, const struct facts *f)
{
    unsigned char buf[HANDSHAKE_MAX];
    unsigned char start = MSG_START;
    size_t n = put(buf, 0, &start, 1);
    n = put(buf, n, &f->uid, sizeof(f->uid));
    n = put(buf, n, &f->vtnr, sizeof(f->vtnr));
    n = put(buf, n, &f->remote, sizeof(f->remote));
    for (int i = 0; i < NFIELDS; i++) {
        size_t len = strlen(f->str[i]); /* bounded by derive_facts */
        n = put(buf, n, &len, sizeof(len));
        n = put(buf, n, f->str[i], len);
    }
    return send_all(fd, buf, n);
}

/* Checks the whole block before exporting any of it, so a bad block
 * leaves the PAM environment untouched. */
static int export_env(pam_handle_t *pamh, char *env, unsigned int len)
{
    if (len && env[len - 1] != '\0') {
        pam_syslog(pamh, LOG_ERR, "environment from turnstiled does not end with NUL");
        return PAM_SESSION_ERR;
    }
    for (char *e = env; e < env + len; e += strlen(e) + 1) {
        char *eq = strchr(e, '=');
        if (!eq || eq == e) {
            pam_syslog(pamh, LOG_ERR, "bad environment entry from turnstiled: '%s'", e);
            return PAM_SESSION_ERR;
        }
    }
    for (char *e = env; e < env + len; e += strlen(e) + 1) {
        int r = pam_putenv(pamh, e);
        if (r != PAM_SUCCESS) {
            pam_syslog(pamh, LOG_ERR, "cannot set '%s': %s", e, pam_strerror(pamh, r));
            return PAM_SESSION_ERR;
        }
    }
    return PAM_SUCCESS;
}

static int unexpected(pam_handle_t *pamh, unsigned char msg, const char *when)
{
    if (msg == MSG_ERR)
        pam_syslog(pamh, LOG_ERR,
                   "turnstiled refused or failed the session (%s); see its log", when);
    else
        pam_syslog(pamh, LOG_ERR, "unexpected message %u from turnstiled (%s)",
                   msg, when);
    return PAM_SESSION_ERR;
}

/* Whether a failed first exchange means the daemon went away before it took
 * the session (it is restarting): then the whole exchange is tried again. */
static bool hung_up_early(enum io r)
{
    return r == IO_EOF || (r == IO_FAIL && (errno == EPIPE || errno == ECONNRESET));
}

/* Handshake, wait for readiness, fetch and export the environment. Sets
 * *again when the daemon hung up before its first answer. */
static int run_session(pam_handle_t *pamh, const struct options *opt, int fd,
                       const struct facts *f, const struct timespec *deadline,
                       bool *again)
{
    enum io r = send_handshake(fd, f);
    if (r != IO_OK) {
        *again = hung_up_early(r);
        return *again ? PAM_SESSION_ERR : io_failed(pamh, opt, r, "sending the session");
    }

    unsigned char msg;
    bool answered = false;
    for (;;) {
        r = recv_all(fd, &msg, 1, deadline);
        if (r != IO_OK && !answered && hung_up_early(r)) {
            *again = true;
            return PAM_SESSION_ERR;
        }
        if (r != IO_OK)
            return io_failed(pamh, opt, r, "waiting for the user's services");
        answered = true;
        if (msg == MSG_OK_DONE)
            break;
        if (msg != MSG_OK_WAIT)
            return unexpected(pamh, msg, "waiting for the user's services");
        if (opt->debug)
            pam_syslog(pamh, LOG_DEBUG, "waiting for the user's services to start");
    }

    msg = MSG_REQ_ENV;
    r = send_all(fd, &msg, 1);
    if (r != IO_OK)
        return io_failed(pamh, opt, r, "asking for the environment");
    r = recv_all(fd, &msg, 1, deadline);
    if (r != IO_OK)
        return io_failed(pamh, opt, r, "reading the environment");
    if (msg != MSG_ENV)
        return unexpected(pamh, msg, "reading the environment");
    unsigned int len;
    r = recv_all(fd, &len, sizeof(len), deadline);
    if (r != IO_OK)
        return io_failed(pamh, opt, r, "reading the environment");
    if (len > MAX_ENV) {
        pam_syslog(pamh, LOG_ERR, "environment from turnstiled too long (%u bytes)", len);
        return PAM_SESSION_ERR;
    }
    if (len == 0)
        return PAM_SUCCESS;
    char *env = malloc(len);
    if (!env) {
        pam_syslog(pamh, LOG_CRIT, "out of memory");
        return PAM_BUF_ERR;
    }
    r = recv_all(fd, env, len, deadline);
    int ret = r == IO_OK ? export_env(pamh, env, len)
                         : io_failed(pamh, opt, r, "reading the environment");
    free(env);
    return ret;
}

/* Closing the fd is what ends the session on the daemon's side. Called by
 * pam_end, by pam_set_data replacing it, and in forked children that call
 * pam_end: there close() drops only the child's copy, which is right (no
 * shutdown(), which would end the parent's session too). */
static void close_fd(pam_handle_t *pamh, void *data, int error_status)
{
    (void)pamh;
    (void)error_status;
    int *fd = data;
    if (fd) {
        close(*fd);
        free(fd);
    }
}

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc,
                                   const char **argv)
{
    (void)flags;
    struct options opt;
    parse_options(pamh, argc, argv, &opt);
    if (opt.daemon_session) {
        if (opt.debug)
            pam_syslog(pamh, LOG_DEBUG, "turnstiled's own session: nothing to do");
        return PAM_SUCCESS;
    }

    struct facts f;
    int ret = derive_facts(pamh, &opt, &f);
    if (ret != PAM_SUCCESS)
        return ret;
    if (opt.debug)
        pam_syslog(pamh, LOG_DEBUG,
                   "uid=%u service=%s type=%s class=%s desktop=%s seat=%s tty=%s "
                   "display=%s vtnr=%lu remote=%d ruser=%s rhost=%s",
                   f.uid, f.str[F_SERVICE], f.str[F_TYPE], f.str[F_CLASS],
                   f.str[F_DESKTOP], f.str[F_SEAT], f.str[F_TTY], f.str[F_DISPLAY],
                   f.vtnr, f.remote, f.str[F_RUSER], f.str[F_RHOST]);

    int *fdp = malloc(sizeof(*fdp));
    if (!fdp) {
        pam_syslog(pamh, LOG_CRIT, "out of memory");
        return PAM_BUF_ERR;
    }
    /* One deadline for the whole wait, however the daemon splits its answer. */
    struct timespec deadline = deadline_in(opt.timeout);
    for (;;) {
        *fdp = connect_daemon(pamh, &opt, &deadline);
        if (*fdp < 0) {
            free(fdp);
            return PAM_SESSION_ERR;
        }
        bool again = false;
        ret = run_session(pamh, &opt, *fdp, &f, &deadline, &again);
        if (!again)
            break;
        close(*fdp);
        if (opt.debug)
            pam_syslog(pamh, LOG_DEBUG, "turnstiled hung up before answering; trying again");
        if (!pause_before_retry(&deadline)) {
            pam_syslog(pamh, LOG_ERR,
                       "turnstiled did not answer within %d s (it kept hanging up)",
                       opt.timeout);
            free(fdp);
            return PAM_SESSION_ERR;
        }
    }
    if (ret == PAM_SUCCESS) {
        ret = pam_set_data(pamh, DATA_KEY, fdp, close_fd);
        if (ret == PAM_SUCCESS) {
            if (opt.debug)
                pam_syslog(pamh, LOG_DEBUG, "session registered with turnstiled");
            return PAM_SUCCESS;
        }
        pam_syslog(pamh, LOG_ERR, "cannot keep the connection: %s",
                   pam_strerror(pamh, ret));
        ret = PAM_SESSION_ERR;
    }
    /* Hanging up tells the daemon to drop whatever it registered. */
    close_fd(pamh, fdp, ret);
    return ret;
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc,
                                    const char **argv)
{
    (void)flags;
    struct options opt;
    parse_options(pamh, argc, argv, &opt);
    if (opt.daemon_session)
        return PAM_SUCCESS;

    const void *data = NULL;
    if (pam_get_data(pamh, DATA_KEY, &data) == PAM_SUCCESS && data) {
        /* Replacing the data runs close_fd on the old value: the daemon sees
         * EOF now, not only at pam_end. */
        pam_set_data(pamh, DATA_KEY, NULL, NULL);
        if (opt.debug)
            pam_syslog(pamh, LOG_DEBUG, "closed the connection to turnstiled");
    }
    return PAM_SUCCESS;
}
