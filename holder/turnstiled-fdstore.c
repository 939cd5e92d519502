/*
 * turnstiled-fdstore: keeps turnstiled's descriptors while turnstiled
 * restarts.
 *
 * The daemon's end of every PAM connection and of every holder channel
 * lives in the daemon; if only the daemon held them, a crash or a restart
 * would close them all, and with them every session and every user's
 * manager. So the daemon also hands a copy of each to this store, which
 * outlives it, and a new daemon takes them back. The store decides
 * nothing: it keeps what it is given, gives it all back to whoever
 * connects, and lets go of everything when no daemon comes back in time.
 * There is one per system.
 *
 * Started by the daemon as root with:
 *   argv[1]  ADOPT_TIMEOUT_MS, decimal digits only (anything else: a usage
 *            line and exit 2)
 *   fd 3     a listening AF_UNIX SOCK_SEQPACKET socket, bound and
 *            listening; the store makes it non-blocking and never learns
 *            its path
 *   fd 0     /dev/null; fds 1 and 2 the daemon's log, where the store
 *            writes single lines beginning "turnstiled-fdstore: "
 * Every other inherited descriptor is closed at start. The store first
 * leaves the daemon's session (setsid), so that nothing sent to the
 * daemon's process group (Ctrl-C, a service manager signalling the group)
 * reaches it; it ignores SIGHUP and SIGPIPE, and raises its soft
 * RLIMIT_NOFILE to the hard limit, but no higher than 65536.
 *
 * Connections. The store accepts connections from uid 0 only (SO_PEERCRED);
 * any other peer is closed at once. It serves one connection at a time: a
 * new root connection replaces the open one, the newest daemon being the
 * live one. Before it lets go of a connection, for whatever reason, the
 * store carries out the packets that connection had already sent (up to
 * 65536 of them), so nothing a daemon sent before it died is lost.
 *
 * A packet is one message: NUL-separated fields, the verb first, at most
 * 65536 bytes. NAME is 1 to 64 bytes, none of them NUL or a control
 * character (below 0x20, or 0x7f); DATA is any bytes but NUL, possibly
 * none.
 *
 * store -> daemon, at once on each accepted connection
 *   entry NAME DATA   one per entry, in the order the entries were first
 *                     kept, with the entry's fd attached (SCM_RIGHTS) if
 *                     it has one
 *   end COUNT         the number of entry packets before it, in decimal
 * The daemon must take all of them within 10 s of connecting; if it does
 * not, the store lets go of the connection. The store sends nothing else,
 * and reads nothing from a connection until its end has gone out.
 *
 * daemon -> store (no replies: each is one sendmsg for the daemon)
 *   keep NAME DATA    with no fd or one: keep entry NAME. An existing entry
 *                     keeps its place in the order and gets the new DATA;
 *                     an attached fd replaces its fd (the old one is
 *                     closed), while a keep without one leaves its fd as
 *                     it was. A new NAME goes to the end. A keep packet is
 *                     at most 65535 bytes, so that its entry packet, one
 *                     byte longer, fits in 65536.
 *   drop NAME         close the entry's fd, forget the entry; an unknown
 *                     NAME is ignored without a word
 *   quit              close every fd and exit 0: the daemon's full stop
 *
 * Anything else (an unknown verb, the wrong number of fields, a bad NAME,
 * an over-long packet, more than one fd, an fd on drop or quit) is logged
 * and ignored, and every fd it carried is closed. Complaints about input
 * (bad packets, refused peers, entries not kept) are one line each, at
 * most 20 in 10 s; how many were left out is logged with the next one
 * let through, or at exit. No input makes the store exit, other than
 * quit, or keep an fd it was not asked to keep.
 *
 * Limits. The store keeps at most 65536 entries, and gives fds to no more
 * of them than its descriptor limit allows, less 8 it keeps for itself.
 * When a keep cannot be carried out (one of those limits, out of memory,
 * or its fd never arrived because the store had no descriptor free), the
 * store logs it, closes the fd and forgets entry NAME altogether: the
 * daemon still has its own copy, and a new daemon finds no entry rather
 * than a stale one.
 *
 * Letting go. When a connection ends (end of file, an error, the 10 s
 * above), a timer of ADOPT_TIMEOUT_MS starts; it also runs from start
 * until the first connection, so a daemon that started the store and died
 * does not leave it behind. A root connection stops the timer. If it runs
 * out, the store closes every fd it keeps and exits 0: holders see their
 * channel end and stop their managers, and PAM connections close. SIGTERM
 * and SIGINT do the same at once; the daemon never sends them, init at
 * shutdown does.
 *
 * Every descriptor of the store's own, and every fd it receives, is
 * close-on-exec.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "close-fds.h"

#define LISTENER 3
#define MAX_PACKET 65536
#define MAX_NAME 64
#define MAX_ENTRIES 65536
#define MAX_NOFILE 65536
/* stdio, the listener, the signalfd, the connection, a newer one being
 * accepted, and a keep's fd arriving before the one it replaces is closed */
#define RESERVED_FDS 8
#define REPLAY_TIMEOUT_MS 10000
#define LOG_BURST 20
#define LOG_WINDOW_MS 10000
/* packets read per wakeup, so that a busy daemon starves neither a newer
 * connection nor a signal */
#define BATCH 64
/* packets carried out from a connection being let go; a queue that long
 * means its daemon is still alive and sending, and it has been replaced */
#define DRAIN_MAX 65536
/* the kernel's limit of fds in one message (SCM_MAX_FD) */
#define MAX_FDS_IN_PACKET 253
#define ACCEPT_RETRY_MS 100

struct entry {
    char *text;          /* NAME then DATA, neither terminated */
    uint32_t data_len;
    uint8_t name_len;
    int fd;              /* -1: none */
};

static struct entry *entries;     /* in the order first kept */
static size_t nentries, entries_cap;
static size_t fds_kept, max_fds_kept;

static int sfd = -1;
static int conn = -1;
static int replaying;             /* entry and end packets still to send */
static size_t replay_next;
static long long replay_deadline;
static long long adopt_timeout_ms;
static long long adopt_deadline;  /* -1: a connection is open */
static long long accept_paused_until;

static long long window_start = LLONG_MIN / 2;
static unsigned window_lines;
static unsigned long untold;

static char packet[MAX_PACKET + 1];

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void vsay(const char *fmt, va_list ap)
{
    char buf[512];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    dprintf(2, "turnstiled-fdstore: %.*s\n", n, buf);
}

static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

static void tell_untold(void)
{
    if (untold)
        say("%lu more complaints were not logged (at most %d in %d s)", untold, LOG_BURST,
            LOG_WINDOW_MS / 1000);
    untold = 0;
}

/* say, for what input causes: a flood of it must not fill the log. */
static void complain(const char *fmt, ...)
{
    long long now = now_ms();
    if (now - window_start >= LOG_WINDOW_MS) {
        tell_untold();
        window_start = now;
        window_lines = 0;
    }
    if (window_lines >= LOG_BURST) {
        untold++;
        return;
    }
    window_lines++;
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

/* At most 16 bytes of untrusted text, anything unprintable as '?'. */
static const char *printable(const char *s, size_t len, char out[static 17])
{
    size_t i;
    for (i = 0; i < len && i < 16; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    out[i] = '\0';
    return out;
}

static void close_fds(const int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
}

/* -- the entries */

/* Linear: a machine's sessions and managers number in the thousands; at
 * the cap of 65536 entries a keep of a new name costs about 0.15 ms. */
static struct entry *find(const char *name, size_t len)
{
    for (size_t i = 0; i < nentries; i++)
        if (entries[i].name_len == len && !memcmp(entries[i].text, name, len))
            return &entries[i];
    return NULL;
}

static void forget(struct entry *e)
{
    if (e->fd >= 0) {
        close(e->fd);
        fds_kept--;
    }
    free(e->text);
    size_t i = (size_t)(e - entries);
    memmove(e, e + 1, (nentries - i - 1) * sizeof *e);
    nentries--;
    /* A burst of sessions gone gives its memory back. */
    if (entries_cap > 64 && nentries < entries_cap / 4) {
        struct entry *less = realloc(entries, entries_cap / 2 * sizeof *entries);
        if (less) {
            entries = less;
            entries_cap /= 2;
        }
    }
}

/* A keep that cannot be carried out leaves no entry NAME behind. */
static void refuse(const char *name, size_t len, int fd, const char *why)
{
    complain("cannot keep %.*s (%s): it is forgotten", (int)len, name, why);
    if (fd >= 0)
        close(fd);
    struct entry *e = find(name, len);
    if (e)
        forget(e);
}

static void keep(const char *name, size_t name_len, const char *data, size_t data_len, int fd)
{
    struct entry *e = find(name, name_len);
    if (!e && nentries >= MAX_ENTRIES) {
        refuse(name, name_len, fd, "more than 65536 entries");
        return;
    }
    if (fd >= 0 && !(e && e->fd >= 0) && fds_kept >= max_fds_kept) {
        refuse(name, name_len, fd, "no descriptor to spare");
        return;
    }
    char *text = malloc(name_len + data_len);
    if (!text) {
        refuse(name, name_len, fd, "out of memory");
        return;
    }
    memcpy(text, name, name_len);
    memcpy(text + name_len, data, data_len);
    if (!e) {
        if (nentries == entries_cap) {
            size_t cap = entries_cap ? 2 * entries_cap : 16;
            struct entry *more = realloc(entries, cap * sizeof *entries);
            if (!more) {
                free(text);
                refuse(name, name_len, fd, "out of memory");
                return;
            }
            entries = more;
            entries_cap = cap;
        }
        e = &entries[nentries++];
        e->fd = -1;
    } else {
        free(e->text);
    }
    e->text = text;
    e->name_len = (uint8_t)name_len;
    e->data_len = (uint32_t)data_len;
    if (fd >= 0) {
        if (e->fd >= 0)
            close(e->fd);
        else
            fds_kept++;
        e->fd = fd;
    }
}

static __attribute__((noreturn, format(printf, 1, 2))) void shut_down(const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    tell_untold();
    say("%s: closing %zu fds of %zu entries and exiting", why, fds_kept, nentries);
    for (size_t i = 0; i < nentries; i++) {
        if (entries[i].fd >= 0)
            close(entries[i].fd);
        free(entries[i].text);
    }
    free(entries);
    if (conn >= 0)
        close(conn);
    close(LISTENER);
    close(sfd);
    exit(0);
}

/* -- packets from the daemon */

static int valid_name(const char *name, size_t len)
{
    if (len < 1 || len > MAX_NAME)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return 0;
    return 1;
}

static void bad_packet(size_t len, const int *fds, size_t nfds, const char *why)
{
    complain("a packet ignored (%zu bytes, %zu fds): %s", len, nfds, why);
    close_fds(fds, nfds);
}

static void on_packet(char *buf, size_t len, int msg_flags, const int *fds, size_t nfds)
{
    /* field[i] and its length flen[i]; only the first three matter */
    const char *field[3] = {buf, NULL, NULL};
    size_t flen[3] = {0, 0, 0}, nfields = 1;
    buf[len] = '\0';
    for (size_t i = 0, start = 0; i <= len; i++) {
        if (buf[i] != '\0')
            continue;
        if (nfields <= 3)
            flen[nfields - 1] = i - start;
        if (i == len)
            break;
        if (nfields < 3)
            field[nfields] = buf + i + 1;
        nfields++;
        start = i + 1;
    }
    const char *verb = field[0];
    int is_keep = nfields == 3 && !strcmp(verb, "keep");
    if (msg_flags & MSG_CTRUNC) {
        /* The kernel could not give us every fd: we were out of them. */
        if (is_keep && valid_name(field[1], flen[1])) {
            close_fds(fds, nfds);
            refuse(field[1], flen[1], -1, "its fd did not arrive");
        } else {
            bad_packet(len, fds, nfds, "its fds did not all arrive");
        }
        return;
    }
    if (msg_flags & MSG_TRUNC) {
        bad_packet(len, fds, nfds, "longer than 65536 bytes");
        return;
    }
    char shown[17];
    if (is_keep) {
        if (!valid_name(field[1], flen[1]))
            bad_packet(len, fds, nfds, "keep: bad name");
        else if (nfds > 1)
            bad_packet(len, fds, nfds, "keep: more than one fd");
        else if (len > MAX_PACKET - 1)
            bad_packet(len, fds, nfds, "keep: longer than 65535 bytes");
        else
            keep(field[1], flen[1], field[2], flen[2], nfds ? fds[0] : -1);
    } else if (nfields == 2 && !strcmp(verb, "drop")) {
        if (!valid_name(field[1], flen[1]))
            bad_packet(len, fds, nfds, "drop: bad name");
        else if (nfds)
            bad_packet(len, fds, nfds, "drop: an fd attached");
        else {
            struct entry *e = find(field[1], flen[1]);
            if (e)
                forget(e);
        }
    } else if (nfields == 1 && !strcmp(verb, "quit")) {
        if (nfds)
            bad_packet(len, fds, nfds, "quit: an fd attached");
        else
            shut_down("quit");
    } else if (!strcmp(verb, "keep") || !strcmp(verb, "drop") || !strcmp(verb, "quit")) {
        bad_packet(len, fds, nfds, "wrong number of fields");
    } else {
        complain("a packet ignored (%zu bytes, %zu fds): unknown verb \"%s\"", len, nfds,
                 printable(verb, flen[0], shown));
        close_fds(fds, nfds);
    }
}

/* Whether the peer of fd has hung up. */
static int hung_up(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Reads one packet from the connection and carries it out. 1: it did;
 * 0: none was waiting; -1: the connection has ended. */
static int receive(void)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(MAX_FDS_IN_PACKET * sizeof(int))];
    } ctl;
    struct iovec iov = {packet, MAX_PACKET};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof ctl.buf};
    ssize_t n = recvmsg(conn, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    int fds[MAX_FDS_IN_PACKET];
    size_t nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count && nfds < MAX_FDS_IN_PACKET; i++)
            memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    /* An empty packet reads as 0 too; only a hung-up peer is the end. That
     * leaves one ambiguity: packets queued behind an empty one from a peer
     * that has since hung up are lost, and an empty packet is bad anyway. */
    if (n == 0 && !nfds && !(msg.msg_flags & MSG_CTRUNC) && hung_up(conn))
        return -1;
    on_packet(packet, (size_t)n, msg.msg_flags, fds, nfds);
    return 1;
}

/* -- the connection */

/* Carries out what the connection had sent, then closes it. */
static void close_conn(void)
{
    for (size_t i = 0; i < DRAIN_MAX && receive() > 0; i++)
        ;
    close(conn);
    conn = -1;
    replaying = 0;
}

/* The connection is gone with no newer one: the adoption timer starts. */
static void lose_conn(const char *why)
{
    close_conn();
    adopt_deadline = now_ms() + adopt_timeout_ms;
    if (adopt_deadline < 0)  /* the sum wrapped: the timeout is practically never */
        adopt_deadline = LLONG_MAX;
    say("%s; %zu entries kept, closing them all in %lld ms unless a daemon connects", why,
        nentries, adopt_timeout_ms);
}

/* Sends the next entry, or end. 1: sent; 0: the peer is not taking
 * packets now; -1: the connection failed. */
static int send_next(void)
{
    char count[24];
    struct iovec iov[4];
    struct msghdr msg = {.msg_iov = iov};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    if (replay_next < nentries) {
        const struct entry *e = &entries[replay_next];
        iov[0] = (struct iovec){"entry", 6};
        iov[1] = (struct iovec){e->text, e->name_len};
        iov[2] = (struct iovec){"", 1};
        iov[3] = (struct iovec){e->text + e->name_len, e->data_len};
        msg.msg_iovlen = 4;
        if (e->fd >= 0) {
            memset(&ctl, 0, sizeof ctl);  /* the padding after the fd goes out too */
            msg.msg_control = ctl.buf;
            msg.msg_controllen = sizeof ctl.buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &e->fd, sizeof(int));
        }
    } else {
        iov[0] = (struct iovec){"end", 4};
        iov[1] = (struct iovec){count, (size_t)snprintf(count, sizeof count, "%zu", nentries)};
        msg.msg_iovlen = 2;
    }
    if (sendmsg(conn, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
        return 1;
    return errno == EAGAIN || errno == EINTR ? 0 : -1;
}

static void replay(void)
{
    for (;;) {
        int r = send_next();
        if (r == 0)
            return;
        if (r < 0) {
            lose_conn("the connection failed while taking the entries");
            return;
        }
        if (replay_next == nentries) {
            replaying = 0;
            say("a daemon took %zu entries", nentries);
            return;
        }
        replay_next++;
    }
}

static void serve(void)
{
    for (int i = 0; i < BATCH; i++) {
        int r = receive();
        if (r == 0)
            return;
        if (r < 0) {
            lose_conn("the connection ended");
            return;
        }
    }
}

static void on_listener(void)
{
    for (;;) {
        int fd = accept4(LISTENER, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                return;
            /* Out of descriptors or memory: the listener stays readable,
             * so wait a little rather than spin. */
            complain("accept: %s", strerror(errno));
            accept_paused_until = now_ms() + ACCEPT_RETRY_MS;
            return;
        }
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len)) {
            complain("a connection refused: SO_PEERCRED: %s", strerror(errno));
            close(fd);
            continue;
        }
        if (cred.uid != 0) {
            complain("a connection from uid %lu refused: only root may connect",
                     (unsigned long)cred.uid);
            close(fd);
            continue;
        }
        if (conn >= 0) {
            say("a newer connection replaces the open one");
            close_conn();
        }
        conn = fd;
        replaying = 1;
        replay_next = 0;
        replay_deadline = now_ms() + REPLAY_TIMEOUT_MS;
        adopt_deadline = -1;
    }
}

/* -- start */

static int is_listener(int fd)
{
    int v;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) || v != AF_UNIX)
        return 0;
    len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) || v != SOCK_SEQPACKET)
        return 0;
    len = sizeof v;
    return !getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) && v;
}

static int parse_timeout(const char *text)
{
    if (!*text)
        return -1;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;  /* decimal digits only: no sign, no space */
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || v > LLONG_MAX)
        return -1;
    adopt_timeout_ms = (long long)v;
    return 0;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) {
        say("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    rlim_t want = rl.rlim_max < MAX_NOFILE ? rl.rlim_max : MAX_NOFILE;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl))
            say("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > RESERVED_FDS)
        max_fds_kept = rl.rlim_cur - RESERVED_FDS < MAX_ENTRIES ? rl.rlim_cur - RESERVED_FDS
                                                                : MAX_ENTRIES;
}

static int signal_fd(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL))
        return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int main(int argc, char **argv)
{
    /* Fails only if we lead a process group already, which keeps the
     * daemon's group signals away just as well. */
    setsid();
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    if (argc != 2 || parse_timeout(argv[1])) {
        say("usage: turnstiled-fdstore ADOPT_TIMEOUT_MS, with a listening socket on fd 3");
        return 2;
    }
    close_fds_from(LISTENER + 1);
    if (!is_listener(LISTENER)) {
        say("fd 3 is not a listening AF_UNIX SOCK_SEQPACKET socket");
        return 1;
    }
    int flags = fcntl(LISTENER, F_GETFL);
    if (flags < 0 || fcntl(LISTENER, F_SETFL, flags | O_NONBLOCK) ||
        fcntl(LISTENER, F_SETFD, FD_CLOEXEC)) {
        say("fcntl on fd 3: %s", strerror(errno));
        return 1;
    }
    raise_nofile();
    sfd = signal_fd();
    if (sfd < 0) {
        say("signalfd: %s", strerror(errno));
        return 1;
    }
    adopt_deadline = now_ms() + adopt_timeout_ms;
    if (adopt_deadline < 0)
        adopt_deadline = LLONG_MAX;
    for (;;) {
        long long now = now_ms();
        long long until = conn < 0 ? adopt_deadline : replaying ? replay_deadline : -1;
        int listen_now = now >= accept_paused_until;
        if (!listen_now && (until < 0 || accept_paused_until < until))
            until = accept_paused_until;
        int timeout = until < 0 ? -1 : until - now > INT_MAX ? INT_MAX
                                     : until > now ? (int)(until - now) : 0;
        struct pollfd fds[3] = {
            {.fd = sfd, .events = POLLIN},
            {.fd = conn, .events = replaying ? POLLOUT : POLLIN},
            {.fd = listen_now ? LISTENER : -1, .events = POLLIN},
        };
        if (poll(fds, 3, timeout) < 0 && errno != EINTR) {
            say("poll: %s", strerror(errno));
            return 1;
        }
        if (fds[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                shut_down("%s", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        }
        /* The open connection's packets come before a newer connection. */
        if (conn >= 0 && fds[1].revents) {
            if (replaying)
                replay();
            else
                serve();
        }
        if (fds[2].revents)
            on_listener();
        now = now_ms();
        if (conn >= 0 && replaying && now >= replay_deadline)
            lose_conn("a daemon did not take the entries within 10 s");
        else if (conn < 0 && now >= adopt_deadline)
            shut_down("no daemon connected within %lld ms", adopt_timeout_ms);
    }
}
