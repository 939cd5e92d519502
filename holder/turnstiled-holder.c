/*
 * turnstiled-holder: the one root process kept per running user manager.
 *
 * turnstiled starts one holder per run of a user's service manager. The
 * holder opens the manager's PAM session and keeps it open for the
 * manager's whole life, runs the backend's run, ready and stop as the user,
 * and is a child subreaper, so nothing the manager leaves behind escapes it:
 * when it says `gone`, no process of that manager remains. It makes no
 * decision of its own; the daemon decides, the holder does. It is small
 * because there is one per logged-in user.
 *
 * Started by the daemon as root with:
 *   fd 3   its end of an AF_UNIX SOCK_SEQPACKET socketpair (the channel)
 *   fd 0   /dev/null; fds 1 and 2 the daemon's log
 *   argv   optionally PAM_SERVICE [PAM_DIR]: that service's PAM stack is
 *          loaded (pam_start, user not yet known) while the holder waits
 *          for start, so a holder the daemon starts ahead of a login has
 *          it ready. A start naming another service (or dir) loads that
 *          one instead.
 *
 * Before start, end of the channel or SIGTERM, SIGINT or SIGHUP make the
 * holder exit at once with status 0: nothing runs yet, so nothing is said
 * (the daemon let a spare go).
 *
 * The channel. One packet is one message, so nothing inside a field (the
 * readiness string comes from a file the user writes) can ever forge a
 * second message. A packet is NUL-separated fields, the verb first, at most
 * 16384 bytes.
 *
 * daemon -> holder
 *   start KEY=VALUE...  exactly once, first: uid, gid, groups (comma-
 *                       separated gids), user, home, shell, rundir (may be
 *                       empty), backend (absolute path), fifo, srvdir,
 *                       confdir, pam_service (empty: no PAM session),
 *                       pam_dir (empty: /etc/pam.d), stop_timeout (ms),
 *                       nofile (the soft descriptor limit the manager
 *                       starts with, before PAM's limits; 0: as inherited),
 *                       and optionally cgroup (a cgroup v2 directory:
 *                       run, ready and stop start in it; missing or
 *                       empty: where the holder is)
 *   ready STRING        run `BACKEND ready STRING`, once
 *   stop                run `BACKEND stop PID`; SIGKILL what is left after
 *                       stop_timeout
 *
 * holder -> daemon
 *   pid N               the manager runs as pid N
 *   up NAME             ready printed `up NAME` (at most 1024 per run)
 *   ready-exit STATUS   ready exited (after its output was read)
 *   exit STATUS         the manager exited (code, or 128 + signal)
 *   error MESSAGE       something failed (PAM, exec)
 *   gone                nothing of the manager remains and its PAM session
 *                       is closed; the holder exits right after
 *
 * End of the channel (the daemon is gone) and SIGTERM, SIGINT or SIGHUP
 * mean stop. Anything else the channel brings is logged and ignored: no
 * sequence of packets can make the holder exit before its manager is gone.
 *
 * run, ready and stop get one environment: the PAM session's, then HOME,
 * USER, LOGNAME, SHELL, PATH and XDG_RUNTIME_DIR (from rundir) where the
 * session set none. They run with the user's uid, gid and supplementary
 * groups, cwd the home directory, stdin /dev/null, no other fds, default
 * signal handling; run in a session of its own. With a cgroup, each enters
 * it before it drops root, so nothing of the manager starts outside it; one
 * that cannot enter it is not run (an exec failure).
 */

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <dirent.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <security/pam_appl.h>

#include "close-fds.h"

#define CHANNEL 3
#define MAX_PACKET 16384
#define MAX_LINE 4096
#define MAX_UPS 1024
#define MAX_GROUPS 65536
#define KILL_RETRY_MS 100
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"

struct spec {
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    size_t ngroups;
    const char *user, *home, *shell, *rundir, *backend, *fifo, *srvdir, *confdir;
    const char *pam_service, *pam_dir, *cgroup;
    long stop_timeout_ms;
    unsigned long nofile;
};

static struct spec spec;
static char *start_packet;       /* the fields of spec point into it */
static char **user_env;
static pam_handle_t *pamh;
static int session_open;

static pid_t manager;            /* 0: not running */
static pid_t ready_pid;
static int ready_fd = -1;        /* read end of ready's stdout */
static int ready_status = -1;    /* ready exited, its output not yet read */
static int ready_ran;
static char line[MAX_LINE];
static size_t line_len;
static int line_overlong;
static unsigned ups;

static int channel_open = 1;
static int stopping;
static long long kill_at = -1;   /* CLOCK_MONOTONIC ms; -1: not armed */

static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    dprintf(2, "turnstiled-holder[%d]: %.*s\n", (int)getpid(), n, buf);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void begin_stop(void);

/* -- the channel */

static void send_event(const char *verb, const char *arg)
{
    char buf[MAX_LINE + 32];
    size_t vlen = strlen(verb), alen = arg ? strlen(arg) : 0;
    if (!channel_open)
        return;
    if (vlen + 1 + alen > sizeof buf)
        alen = sizeof buf - vlen - 1;
    memcpy(buf, verb, vlen);
    size_t len = vlen;
    if (arg) {
        buf[len++] = '\0';
        memcpy(buf + len, arg, alen);
        len += alen;
    }
    if (send(CHANNEL, buf, len, MSG_NOSIGNAL) < 0) {
        say("cannot reach turnstiled (%s): stopping the manager", strerror(errno));
        channel_open = 0;
        begin_stop();
    }
}

static void send_number(const char *verb, long value)
{
    char num[24];
    snprintf(num, sizeof num, "%ld", value);
    send_event(verb, num);
}

static int shell_status(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 255;
}

/* -- the start packet */

static int parse_id(const char *text, unsigned long *out)
{
    char *end;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;  /* decimal digits only: no sign, no space */
    if (!*text)
        return -1;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno || *end || v >= (unsigned long)UINT_MAX)
        return -1;
    *out = v;
    return 0;
}

static int parse_groups(const char *text)
{
    size_t n = 0;
    if (*text)
        for (const char *p = text; p; p = strchr(p, ','), p = p ? p + 1 : NULL)
            n++;
    if (n > MAX_GROUPS)
        return -1;
    spec.groups = calloc(n ? n : 1, sizeof(gid_t));
    if (!spec.groups)
        return -1;
    const char *p = text;
    for (size_t i = 0; i < n; i++) {
        char num[16];
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        unsigned long v;
        if (len == 0 || len >= sizeof num)
            return -1;
        memcpy(num, p, len);
        num[len] = '\0';
        if (parse_id(num, &v))
            return -1;
        spec.groups[i] = (gid_t)v;
        p = comma ? comma + 1 : p + len;
    }
    spec.ngroups = n;
    return 0;
}

/* Fills spec from a start packet's fields; the message says what is wrong. */
static const char *parse_start(char *fields, size_t len)
{
    const char *uid = NULL, *gid = NULL, *groups = NULL, *timeout = NULL, *nofile = NULL;
    struct { const char *key; const char **slot; } keys[] = {
        {"uid", &uid}, {"gid", &gid}, {"groups", &groups}, {"stop_timeout", &timeout},
        {"nofile", &nofile},
        {"user", &spec.user}, {"home", &spec.home}, {"shell", &spec.shell},
        {"rundir", &spec.rundir}, {"backend", &spec.backend}, {"fifo", &spec.fifo},
        {"srvdir", &spec.srvdir}, {"confdir", &spec.confdir},
        {"pam_service", &spec.pam_service}, {"pam_dir", &spec.pam_dir},
        {"cgroup", &spec.cgroup},
    };
    size_t nkeys = sizeof keys / sizeof keys[0];
    spec.cgroup = "";  /* the one key that may be left out */
    for (char *f = fields, *next; f < fields + len; f = next) {
        next = f + strlen(f) + 1;
        char *eq = strchr(f, '=');
        if (!eq)
            return "start: a field is not KEY=VALUE";
        *eq = '\0';
        size_t i;
        for (i = 0; i < nkeys && strcmp(keys[i].key, f); i++)
            ;
        if (i == nkeys)
            return "start: unknown key";
        *keys[i].slot = eq + 1;
    }
    for (size_t i = 0; i < nkeys; i++)
        if (!*keys[i].slot)
            return "start: a key is missing";
    unsigned long v;
    if (parse_id(uid, &v))
        return "start: bad uid";
    spec.uid = (uid_t)v;
    if (parse_id(gid, &v))
        return "start: bad gid";
    spec.gid = (gid_t)v;
    if (parse_groups(groups))
        return "start: bad groups";
    if (parse_id(timeout, &v))
        return "start: bad stop_timeout";
    spec.stop_timeout_ms = (long)v;
    if (parse_id(nofile, &spec.nofile))
        return "start: bad nofile";
    if (spec.backend[0] != '/')
        return "start: backend is not an absolute path";
    if (*spec.cgroup && spec.cgroup[0] != '/')
        return "start: cgroup is not an absolute path";
    if (!*spec.user || !*spec.home)
        return "start: empty user or home";
    return NULL;
}

/* The start packet of n bytes (n may exceed MAX_PACKET: MSG_TRUNC). */
static const char *parse_start_packet(ssize_t n)
{
    if (n > MAX_PACKET)
        return "start: message too long";
    start_packet[n] = '\0';
    size_t vlen = strlen(start_packet);
    if (strcmp(start_packet, "start") || (size_t)n <= vlen + 1)
        return "the first message is not start";
    return parse_start(start_packet + vlen + 1, (size_t)n - vlen - 1);
}

/* Waits for the start packet: 1 if the daemon let this holder go first
 * (end of channel, or a stop signal on sfd), else 0 with the packet read
 * or a problem in *problem. */
static int read_start(int sfd, const char **problem)
{
    *problem = NULL;
    start_packet = malloc(MAX_PACKET + 1);
    if (!start_packet) {
        *problem = "out of memory";
        return 0;
    }
    struct pollfd fds[2] = {{.fd = CHANNEL, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    for (;;) {
        fds[0].revents = fds[1].revents = 0;
        if (poll(fds, 2, -1) < 0 && errno != EINTR) {
            *problem = "poll failed before start";
            return 0;
        }
        if (fds[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                if (si.ssi_signo != SIGCHLD)
                    return 1;
        }
        if (fds[0].revents)
            break;
    }
    ssize_t n;
    do
        n = recv(CHANNEL, start_packet, MAX_PACKET, MSG_TRUNC);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        return 1;
    if (n < 0) {
        static char why[128];
        snprintf(why, sizeof why, "cannot read the channel: %s", strerror(errno));
        *problem = why;
        return 0;
    }
    *problem = parse_start_packet(n);
    return 0;
}

/* -- the manager's PAM session */

static int silent_conv(int n, const struct pam_message **msg, struct pam_response **resp,
                       void *data)
{
    /* No one is at a terminal: messages are dropped, prompts get no answer. */
    (void)msg;
    (void)data;
    if (n <= 0 || n > PAM_MAX_NUM_MSG)
        return PAM_CONV_ERR;
    *resp = calloc((size_t)n, sizeof **resp);
    return *resp ? PAM_SUCCESS : PAM_BUF_ERR;
}

static const struct pam_conv conv = {silent_conv, NULL};

/* The PAM stack loaded at start-up (argv), before the user is known. */
static const char *preloaded_service = "", *preloaded_dir = "";

static int start_stack(const char *service, const char *dir, const char *user)
{
    int rc;
    if (*dir)
        rc = pam_start_confdir(service, user, &conv, dir, &pamh);
    else
        rc = pam_start(service, user, &conv, &pamh);
    if (rc != PAM_SUCCESS)
        pamh = NULL;
    return rc;
}

static const char *open_session(char ***env)
{
    static char why[256];
    int rc;
    *env = NULL;
    if (pamh && (strcmp(spec.pam_service, preloaded_service)
                 || strcmp(spec.pam_dir, preloaded_dir))) {
        pam_end(pamh, PAM_SUCCESS);  /* another stack than the start's */
        pamh = NULL;
    }
    if (!*spec.pam_service)
        return NULL;
    const char *stage = pamh ? "pam_set_item" : "pam_start";
    if (pamh)
        rc = pam_set_item(pamh, PAM_USER, spec.user);
    else
        rc = start_stack(spec.pam_service, spec.pam_dir, spec.user);
    if (rc != PAM_SUCCESS) {
        snprintf(why, sizeof why, "%s(%s): %s", stage, spec.pam_service,
                 pam_strerror(pamh, rc));
        if (pamh)
            pam_end(pamh, rc);
        pamh = NULL;
        return why;
    }
    stage = "pam_acct_mgmt";
    rc = pam_acct_mgmt(pamh, PAM_SILENT);
    if (rc == PAM_NEW_AUTHTOK_REQD)
        rc = PAM_SUCCESS;  /* the password is the login's business */
    if (rc == PAM_SUCCESS) {
        stage = "pam_setcred";
        rc = pam_setcred(pamh, PAM_ESTABLISH_CRED | PAM_SILENT);
    }
    if (rc == PAM_SUCCESS) {
        stage = "pam_open_session";
        rc = pam_open_session(pamh, PAM_SILENT);
    }
    if (rc != PAM_SUCCESS) {
        snprintf(why, sizeof why, "%s(%s) for %s: %s", stage, spec.pam_service, spec.user,
                 pam_strerror(pamh, rc));
        pam_end(pamh, rc);
        pamh = NULL;
        return why;
    }
    session_open = 1;
    *env = pam_getenvlist(pamh);
    return NULL;
}

static void close_session(void)
{
    if (!pamh)
        return;
    int rc = PAM_SUCCESS;
    if (session_open) {
        rc = pam_close_session(pamh, PAM_SILENT);
        pam_setcred(pamh, PAM_DELETE_CRED | PAM_SILENT);
        session_open = 0;
    }
    pam_end(pamh, rc);
    pamh = NULL;
}

/* -- the user's environment */

static int has_name(char **env, size_t n, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (!strncmp(env[i], name, len) && env[i][len] == '=')
            return 1;
    return 0;
}

static int build_env(char **pam_env)
{
    size_t n = 0, cap = 8;
    for (char **e = pam_env; e && *e; e++)
        cap++;
    user_env = calloc(cap + 1, sizeof(char *));
    if (!user_env)
        return -1;
    for (char **e = pam_env; e && *e; e++)
        user_env[n++] = *e;  /* pam_getenvlist's copies, ours to keep */
    free(pam_env);
    const char *defaults[][2] = {
        {"HOME", spec.home}, {"USER", spec.user}, {"LOGNAME", spec.user},
        {"SHELL", spec.shell}, {"PATH", DEFAULT_PATH}, {"XDG_RUNTIME_DIR", spec.rundir},
    };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
        const char *name = defaults[i][0], *value = defaults[i][1];
        if (!*value || has_name(user_env, n, name))
            continue;
        size_t len = strlen(name) + strlen(value) + 2;
        char *entry = malloc(len);
        if (!entry)
            return -1;
        snprintf(entry, len, "%s=%s", name, value);
        user_env[n++] = entry;
    }
    user_env[n] = NULL;
    return 0;
}

/* -- running things as the user */

/* What the child runs is written for a child that shares the holder's
 * memory until it execs (see spawn): it allocates nothing, takes no lock,
 * uses no stdio, writes no variable of the holder's (errno aside, which
 * the holder does not read across a spawn), and makes only plain system
 * calls. */

/* The credential calls go to the kernel directly. glibc's setuid, setgid
 * and setgroups change every thread of a process that has had threads (a
 * PAM module may start one), by signalling them; in a child sharing the
 * holder's memory that would act on the holder's threads and locks. The
 * child is one thread of its own, so the bare call is all it needs.
 * Where the old 16-bit calls kept the plain names, the 32-bit ones are
 * taken. */
#ifdef SYS_setuid32
#define SYS_SETUID SYS_setuid32
#define SYS_SETRESGID SYS_setresgid32
#define SYS_SETGROUPS SYS_setgroups32
#else
#define SYS_SETUID SYS_setuid
#define SYS_SETRESGID SYS_setresgid
#define SYS_SETGROUPS SYS_setgroups
#endif

/* In the child, still root: moves this process into spec.cgroup. */
static int enter_cgroup(void)
{
    static const char procs[] = "/cgroup.procs";
    char path[PATH_MAX];
    if (!*spec.cgroup)
        return 0;
    size_t len = strlen(spec.cgroup);
    if (len + sizeof procs > sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(path, spec.cgroup, len);
    memcpy(path + len, procs, sizeof procs);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    /* "0" is the writer itself. */
    ssize_t n = write(fd, "0", 1);
    int err = errno;
    close(fd);
    errno = err;
    return n == 1 ? 0 : -1;
}

/* In the child: become the user and exec; never returns. Every signal is
 * blocked on entry (see spawn). */
static void exec_as_user(char *const argv[], int out, int new_session, int report)
{
    /* Handlers go back to the default while every signal is still
     * blocked: the holder's handlers are the holder's code on the holder's
     * memory, and must never run in the child. Then nothing is blocked, as
     * the program expects. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (new_session)
        setsid();
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0)
        goto fail;
    /* The exec report moves just above stdio; everything else goes. */
    if (dup3(report, 3, O_CLOEXEC) < 0)
        goto fail;
    report = 3;
    close_fds_from(4);
    if (enter_cgroup())
        goto fail;
    /* The saved gid stays one not the user's until the exec, which sets
     * it to the effective one. Between dropping root and the exec the
     * child shares the holder's memory, and were it the user's process in
     * every id, the user could ptrace it, or write to its /proc/PID/mem,
     * wherever the kernel leaves it dumpable (fs.suid_dumpable=1): that
     * would be writing to the holder, a root process. A saved gid not the
     * user's fails the kernel's check that the tracer's ids are all the
     * target's; root's, or for a user whose group is root's, another.
     * Capabilities follow the uids, which all become the user's here. */
    gid_t saved = spec.gid != 0 ? 0 : 1;
    if (syscall(SYS_SETGROUPS, spec.ngroups, spec.groups)
        || syscall(SYS_SETRESGID, spec.gid, spec.gid, saved) || syscall(SYS_SETUID, spec.uid))
        goto fail;
    if (getuid() != spec.uid || geteuid() != spec.uid || getegid() != spec.gid)
        goto fail;
    if (chdir(spec.home) && chdir("/"))
        goto fail;
    execve(argv[0], argv, user_env);
fail:;
    int err = errno;
    if (write(report, &err, sizeof err) < 0)
        _exit(127);
    _exit(127);
}

/* The child's stack: spawn's child runs on its own stack in the holder's
 * memory, made once and kept, with an inaccessible page at the end it
 * grows towards, so that an overflow faults instead of writing over the
 * holder's data. One stack serves every spawn: the holder is suspended
 * until the child execs or exits, after which nothing runs on it. */
#define CHILD_STACK_SIZE (64 * 1024)
static char *child_stack;        /* its lowest address, a guard page */
static size_t child_stack_len;

static int make_child_stack(void)
{
    if (child_stack)
        return 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = CHILD_STACK_SIZE + 2 * page;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    /* a guard page at either end: which one the stack grows towards
     * depends on the architecture */
    if (mprotect(p, page, PROT_NONE) || mprotect(p + len - page, page, PROT_NONE)) {
        int err = errno;
        munmap(p, len);
        errno = err;
        return -1;
    }
    child_stack = p;
    child_stack_len = len;
    return 0;
}

struct child_args {
    char *const *argv;
    int out, new_session, report;
};

static int child_main(void *arg)
{
    const struct child_args *a = arg;
    exec_as_user(a->argv, a->out, a->new_session, a->report);
    return 127;  /* not reached: exec_as_user execs or exits */
}

/* Starts argv as the user; returns the pid once it runs, or -errno.
 *
 * The child is a clone with CLONE_VM | CLONE_VFORK, as a vfork on a stack
 * of its own: it shares the holder's memory and the holder is suspended
 * until it execs or exits. fork would copy the page tables of the holder
 * (libpam and its modules included) only for the child to throw them away
 * at exec, and the holder would then take copy-on-write faults on its own
 * pages; this is on every login's path (run, then ready) and on stop. The
 * holder waits for the exec anyway, to report an exec failure, so being
 * suspended costs nothing.
 *
 * Every signal is blocked across the clone: a signal that arrived in the
 * child before it has put every handler back to the default would run
 * the holder's handler in the child, on the holder's memory. The child
 * unblocks them once it has (exec_as_user).
 *
 * Why the exec is reported through a pipe, when the shared memory could
 * carry the errno: CLONE_VM is not always honoured. valgrind runs such a
 * clone as a plain fork, whose child writes to its own copy of the memory.
 * A close-on-exec pipe works either way: end of file means the exec
 * happened, an int on it is the errno of whatever failed. */
static pid_t spawn(char *const argv[], int out, int new_session)
{
    if (make_child_stack())
        return -errno;
    int report[2];
    if (pipe2(report, O_CLOEXEC))
        return -errno;
    struct child_args args = {argv, out, new_session, report[1]};
    /* (glibc keeps its two internal signals out of any mask; it sends
     * them only to the holder's own threads, never to the child.) */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
#ifdef __hppa__
    char *sp = child_stack + (size_t)sysconf(_SC_PAGESIZE);  /* grows up */
#else
    char *sp = child_stack + child_stack_len - (size_t)sysconf(_SC_PAGESIZE);
#endif
    /* The kernel marks the memory of a process that drops root not
     * dumpable (per fs.suid_dumpable); the child's is the holder's, so the
     * holder puts its own mark back once the child is done with it. */
    int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    pid_t pid = clone(child_main, sp, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    int err = errno;
    if (dumpable >= 0 && prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != dumpable)
        prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0);
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    if (pid < 0) {
        close(report[0]);
        return -err;
    }
    err = 0;
    ssize_t n;
    do
        n = read(report[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof err) {
        waitpid(pid, NULL, 0);
        return -(err ? err : EPERM);
    }
    return pid;
}

static void spawn_failed(const char *what, int err)
{
    char msg[512];
    snprintf(msg, sizeof msg, "cannot run %s %s: %s", spec.backend, what, strerror(err));
    say("%s", msg);
    send_event("error", msg);
}

static int start_manager(void)
{
    char *argv[] = {(char *)spec.backend, "run", (char *)spec.fifo, (char *)spec.srvdir,
                    (char *)spec.confdir, NULL};
    pid_t pid = spawn(argv, 2, 1);
    if (pid < 0) {
        spawn_failed("run", (int)-pid);
        return -1;
    }
    manager = pid;
    send_number("pid", pid);
    return 0;
}

static void run_ready(const char *arg)
{
    if (ready_ran || stopping || !manager) {
        say("ready ignored: %s", ready_ran ? "it ran already" : "the manager is stopping");
        return;
    }
    int out[2];
    /* Only our end is non-blocking: ready's own writes must wait for us. */
    if (pipe2(out, O_CLOEXEC) || fcntl(out[0], F_SETFL, O_NONBLOCK)) {
        spawn_failed("ready", errno);
        return;
    }
    char *argv[] = {(char *)spec.backend, "ready", (char *)arg, NULL};
    pid_t pid = spawn(argv, out[1], 0);
    close(out[1]);
    ready_ran = 1;
    if (pid < 0) {
        close(out[0]);
        spawn_failed("ready", (int)-pid);
        send_number("ready-exit", 127);
        return;
    }
    ready_pid = pid;
    ready_fd = out[0];
}

/* -- ready's output: `up NAME` lines, bounded */

static void on_line(void)
{
    /* exactly two words: "up" and a name */
    char *save, *w1 = strtok_r(line, " \t\r", &save);
    char *w2 = w1 ? strtok_r(NULL, " \t\r", &save) : NULL;
    if (!w1 || !w2 || strtok_r(NULL, " \t\r", &save) || strcmp(w1, "up"))
        return;
    if (ups < MAX_UPS) {
        ups++;
        send_event("up", w2);
    }
}

static void finish_ready_output(void);

static void read_ready(void)
{
    char buf[4096];
    for (;;) {
        ssize_t n = read(ready_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            finish_ready_output();
            return;
        }
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == '\n') {
                if (!line_overlong) {
                    line[line_len] = '\0';
                    on_line();
                }
                line_len = 0;
                line_overlong = 0;
            } else if (line_len < sizeof line - 1) {
                line[line_len++] = buf[i];
            } else {
                line_overlong = 1;  /* dropped, never buffered */
            }
        }
    }
}

/* ready's output has ended, or ready exited: anything it left running in
 * the background may not hold up the report, and loses its stdout. */
static void finish_ready_output(void)
{
    if (ready_fd >= 0) {
        close(ready_fd);
        ready_fd = -1;
    }
    if (ready_status >= 0) {
        send_number("ready-exit", ready_status);
        ready_status = -1;
    }
}

/* -- stopping and killing */

struct proc {
    pid_t pid, ppid;
    char comm[16];  /* the program it runs: changes at exec */
};

/* Every live process below the holder, from /proc; count in *n. */
static struct proc *descendants(size_t *n)
{
    size_t cap = 256, count = 0, found = 0;
    struct proc *all = malloc(cap * sizeof *all);
    struct proc *out = NULL;
    DIR *d = opendir("/proc");
    *n = 0;
    if (!all || !d)
        goto done;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], stat[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t len = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (len <= 0)
            continue;
        stat[len] = '\0';
        char *open_paren = strchr(stat, '('), *paren = strrchr(stat, ')');
        char state;
        int ppid;
        if (!open_paren || !paren || paren < open_paren
            || sscanf(paren + 1, " %c %d", &state, &ppid) != 2 || state == 'Z')
            continue;
        if (count == cap) {
            struct proc *more = realloc(all, 2 * cap * sizeof *all);
            if (!more)
                goto done;
            all = more;
            cap *= 2;
        }
        struct proc *p = &all[count++];
        p->pid = atoi(e->d_name);
        p->ppid = ppid;
        size_t clen = (size_t)(paren - open_paren - 1);
        if (clen >= sizeof p->comm)
            clen = sizeof p->comm - 1;
        memcpy(p->comm, open_paren + 1, clen);
        p->comm[clen] = '\0';
    }
    out = malloc((count + 1) * sizeof *out);
    if (!out)
        goto done;
    /* breadth first from us: out[0..found) are ours */
    pid_t me = getpid();
    for (size_t i = 0; i < count; i++)
        if (all[i].ppid == me)
            out[found++] = all[i];
    for (size_t head = 0; head < found; head++)
        for (size_t i = 0; i < count; i++)
            if (all[i].ppid == out[head].pid)
                out[found++] = all[i];
    *n = found;
done:
    if (d)
        closedir(d);
    free(all);
    return out;
}

static void kill_all(int sig)
{
    size_t n;
    struct proc *procs = descendants(&n);
    if (!procs)
        return;
    for (size_t i = 0; i < n; i++)
        kill(procs[i].pid, sig);
    free(procs);
}

/* What the manager left behind gets SIGTERM once per program it runs, swept
 * for again every KILL_RETRY_MS until the kill deadline. Once is not
 * enough: a process caught between fork and exec (a runsvdir's child about
 * to become a runsv) takes the signal into the old program's handler, and
 * the new program never learns of it; so one that has exec'd since it was
 * signalled (its comm differs) is signalled again, and one forked since is
 * signalled too. Nothing is sent SIGTERM twice while it runs one program. */
static struct proc *termed;
static size_t ntermed;

static int was_termed(const struct proc *p)
{
    for (size_t i = 0; i < ntermed; i++)
        if (termed[i].pid == p->pid && !strcmp(termed[i].comm, p->comm))
            return 1;
    return 0;
}

static void term_leftovers(void)
{
    size_t n;
    struct proc *procs = descendants(&n);
    if (!procs)
        return;
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++)
        fresh += !was_termed(&procs[i]);
    struct proc *more = fresh ? realloc(termed, (ntermed + fresh) * sizeof *termed) : termed;
    if (!more) {
        kill_all(SIGTERM);  /* out of memory: at least this sweep */
        free(procs);
        return;
    }
    termed = more;
    for (size_t i = 0; i < n; i++)
        if (!was_termed(&procs[i])) {
            kill(procs[i].pid, SIGTERM);
            termed[ntermed++] = procs[i];
        }
    free(procs);
}

static void arm_kill_deadline(void)
{
    if (kill_at < 0)
        kill_at = now_ms() + spec.stop_timeout_ms;
}

static void begin_stop(void)
{
    if (stopping)
        return;
    stopping = 1;
    arm_kill_deadline();
    if (!manager)
        return;
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)manager);
    char *argv[] = {(char *)spec.backend, "stop", pid, NULL};
    pid_t p = spawn(argv, 2, 0);
    if (p < 0) {
        spawn_failed("stop", (int)-p);
        kill_all(SIGTERM);
    }
}

/* -- the loop */

static void on_command(void)
{
    static char buf[MAX_PACKET + 1];
    ssize_t n = recv(CHANNEL, buf, MAX_PACKET, MSG_TRUNC | MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        n = 0;
    }
    if (n == 0) {
        /* A zero-length packet reads as 0 too; only a hung-up peer is EOF. */
        struct pollfd pfd = {.fd = CHANNEL, .events = POLLRDHUP};
        if (poll(&pfd, 1, 0) != 1 || !(pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            say("an empty message ignored");
            return;
        }
        say("turnstiled is gone: stopping the manager");
        channel_open = 0;
        begin_stop();
        return;
    }
    if (n > MAX_PACKET) {
        say("a message of %zd bytes dropped", n);
        return;
    }
    buf[n] = '\0';
    size_t vlen = strnlen(buf, (size_t)n);
    const char *arg = vlen < (size_t)n ? buf + vlen + 1 : NULL;
    int nfields = 1;
    for (ssize_t i = 0; i < n; i++)
        nfields += buf[i] == '\0';
    if (!strcmp(buf, "ready") && nfields == 2)
        run_ready(arg);
    else if (!strcmp(buf, "stop") && nfields == 1)
        begin_stop();
    else
        say("a malformed or unknown message ignored (%d fields)", nfields);
}

/* Reaps every exited child; returns 1 while any child is left. */
static int reap(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0)
            return errno != ECHILD;
        if (pid == 0)
            return 1;
        if (pid == manager) {
            manager = 0;
            send_number("exit", shell_status(status));
            /* What the manager leaves behind goes with it; the deadline
             * covers whatever ignores TERM. */
            term_leftovers();
            arm_kill_deadline();
        } else if (pid == ready_pid) {
            ready_pid = 0;
            ready_status = shell_status(status);
            if (ready_fd >= 0)
                read_ready();  /* what it printed before it went */
            finish_ready_output();
        }
    }
}

static int signal_fd(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    if (sigprocmask(SIG_BLOCK, &set, NULL))
        return -1;
    sigdelset(&set, SIGPIPE);
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

static void on_signals(int sfd)
{
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
        if (si.ssi_signo != SIGCHLD)
            begin_stop();
}

static void run_loop(int sfd)
{
    while (reap()) {
        struct pollfd fds[3];
        nfds_t n = 0;
        fds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        if (channel_open)
            fds[n++] = (struct pollfd){.fd = CHANNEL, .events = POLLIN};
        if (ready_fd >= 0)
            fds[n++] = (struct pollfd){.fd = ready_fd, .events = POLLIN};
        int timeout = -1;
        if (kill_at >= 0) {
            long long left = kill_at - now_ms();
            if (left <= 0) {
                kill_all(SIGKILL);
                kill_at = now_ms() + KILL_RETRY_MS;
                left = KILL_RETRY_MS;
            } else if (!manager) {
                term_leftovers();
                if (left > KILL_RETRY_MS)
                    left = KILL_RETRY_MS;
            }
            timeout = (int)left;
        }
        if (poll(fds, n, timeout) < 0 && errno != EINTR)
            break;
        for (nfds_t i = 0; i < n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (fds[i].fd == sfd)
                on_signals(sfd);
            else if (fds[i].fd == CHANNEL)
                on_command();
            else if (fds[i].fd == ready_fd)
                read_ready();
        }
    }
}

int main(int argc, char **argv)
{
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) {
        say("prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));
        return 1;
    }
    int sfd = signal_fd();
    if (sfd < 0) {
        say("signalfd: %s", strerror(errno));
        return 1;
    }
    if (argc > 1 && *argv[1]) {
        /* Loaded while the daemon has nothing for us yet; a failure here
         * is reported, if the start asks for this stack, by a second try. */
        preloaded_service = argv[1];
        preloaded_dir = argc > 2 ? argv[2] : "";
        start_stack(preloaded_service, preloaded_dir, NULL);
    }
    const char *problem;
    if (read_start(sfd, &problem)) {
        close_session();  /* only the preloaded stack: no session was opened */
        return 0;
    }
    if (problem) {
        say("%s", problem);
        send_event("error", problem);
        close_session();
        send_event("gone", NULL);
        return 1;
    }
    /* The daemon raised its own descriptor limit; the user's manager
     * starts from the usual one, which the PAM session may then set. */
    struct rlimit rl;
    if (spec.nofile && !getrlimit(RLIMIT_NOFILE, &rl)) {
        rl.rlim_cur = spec.nofile < rl.rlim_max ? spec.nofile : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl))
            say("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    }
    char **pam_env;
    problem = open_session(&pam_env);
    if (!problem && build_env(pam_env))
        problem = "out of memory";
    if (problem || start_manager()) {
        /* Nothing of a manager runs: say so, and that nothing remains. */
        if (problem) {
            say("%s", problem);
            send_event("error", problem);
        }
        close_session();
        send_event("gone", NULL);
        return 1;
    }
    run_loop(sfd);
    free(termed);
    close_session();
    send_event("gone", NULL);
    return 0;
}
