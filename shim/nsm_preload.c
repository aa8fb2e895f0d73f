/*
 * nsm_preload.c: an LD_PRELOAD library that turns /dev/nsm into the NSM emulator's Unix socket.
 *
 *   cc -shared -fPIC -O2 -Wall -Wextra -Werror -o libnsm_preload.so nsm_preload.c -ldl
 *   NSM_EMULATOR=unix:/tmp/nsm.sock LD_PRELOAD=$PWD/libnsm_preload.so your-program
 *
 * open("/dev/nsm") connects to the emulator and returns the socket; ioctl(fd, NSM_IOCTL_RAW, &raw)
 * on that fd sends raw.request as one frame (4-byte big-endian length, then the CBOR bytes, see
 * nsm/_framing.py) and copies the answer frame back with the in-tree driver's exact semantics
 * (drivers/misc/nsm.c, reference/nsm.md section 1.1): unknown cmd -> EINVAL, request over 0x1000
 * -> EMSGSIZE, the answer silently truncated to response.len, response.len the only field changed.
 * Every other path and fd goes to libc untouched.
 *
 * Known limits: the program must reach open/ioctl/close through the dynamic libc symbols (Go's
 * runtime and static binaries make raw syscalls and bypass any preload); glibc's internal opens
 * (fopen) are not interposable; an NSM fd closed behind our back (close_range, dup2 onto it, a raw
 * syscall) stays in the table until its number is handed out again by one of the opens below.
 */

#define _GNU_SOURCE
/* Fortified headers turn open() into an inline wrapper, which would clash with our definition. */
#undef _FORTIFY_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define NSM_PATH "/dev/nsm"
/* _IOWR(0x0A, 0, struct nsm_raw) from include/uapi/linux/nsm.h (reference/nsm.md 1.1). */
#define NSM_IOCTL_RAW 0xC0200A00u
/* NSM_REQUEST_MAX_SIZE and NSM_RESPONSE_MAX_SIZE in drivers/misc/nsm.c. */
#define NSM_REQUEST_MAX 0x1000u
#define NSM_RESPONSE_MAX 0x3000u
/* NSM_DEFAULT_TIMEOUT_MSECS in drivers/misc/nsm.c: the driver gives up with ETIMEDOUT after it. */
#define NSM_TIMEOUT_MS 120000L
/* Environment: the emulator address (same variable and syntax as nsm/_transport.py). */
#define EMULATOR_ENV "NSM_EMULATOR"
#define EMULATOR_SCHEME "unix:"
/* Environment: a shorter answer timeout in milliseconds, so tests need not wait two minutes. */
#define TIMEOUT_ENV "NSM_PRELOAD_TIMEOUT_MS"
/* Open NSM fds one process can hold; a program needs one, a threaded one a few. */
#define MAX_TRACKED 128
#define FRAME_HEADER 4

struct nsm_iovec {
    uint64_t addr;
    uint64_t len;
};

struct nsm_raw {
    struct nsm_iovec request;
    struct nsm_iovec response;
};

_Static_assert(sizeof(struct nsm_raw) == 32, "struct nsm_raw must match the UAPI layout");
_Static_assert(NSM_IOCTL_RAW == ((3u << 30) | (32u << 16) | (0x0Au << 8) | 0u),
               "NSM_IOCTL_RAW must be _IOWR(0x0A, 0, 32)");

/* The glibc fortify entry points; no public header declares them once fortify is off. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

/*
 * One open /dev/nsm. `fd` is the number the program holds; `conn` is our own CLOEXEC dup of the
 * same connection, so an ioctl in flight keeps a valid socket even if another thread closes `fd`
 * (the kernel keeps its file alive the same way). conn < 0 means "reconnect before the next
 * request": after a fork (two processes must not interleave frames on one stream) and after a
 * broken exchange (the stream is out of step; the kernel's device also recovers per call).
 */
struct nsm_entry {
    int fd;
    int conn;
    int refs; /* 1 while in the table, +1 per ioctl in flight; guarded by table_lock */
    int conn_lost; /* atomic: conn's number was closed behind our back and handed out again */
    long timeout_ms;
    pthread_mutex_t io; /* serializes requests, like the driver's per-device mutex */
    char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nsm_entry *table[MAX_TRACKED];
/* Read without the lock as a fast path: while it is 0 no fd of this process is ours. */
static int tracked_count;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* ---- the real functions, resolved on first use ------------------------------------------- */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*close_fn)(int);
typedef int (*ioctl_fn)(int, unsigned long, ...);

/* Racing first calls both store the same dlsym answer, so an atomic pointer is enough. */
static void *resolve(void **slot, const char *name)
{
    void *fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = dlsym(RTLD_NEXT, name);
        if (fn != NULL)
            __atomic_store_n(slot, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

#define REAL(type, name)                                                                         \
    static type real_##name(void)                                                                \
    {                                                                                            \
        static void *slot;                                                                       \
        return (type)resolve(&slot, #name);                                                      \
    }

REAL(open_fn, open)
REAL(open_fn, open64)
REAL(openat_fn, openat)
REAL(openat_fn, openat64)
REAL(open2_fn, __open_2)
REAL(open2_fn, __open64_2)
REAL(openat2_fn, __openat_2)
REAL(openat2_fn, __openat64_2)
REAL(close_fn, close)
REAL(ioctl_fn, ioctl)

static int sys_close(int fd)
{
    close_fn fn = real_close();
    if (fn == NULL) {
        errno = ENOSYS;
        return -1;
    }
    return fn(fd);
}

/* Forget our connection; close it only if its number is still ours. */
static void drop_conn(struct nsm_entry *e)
{
    if (e->conn >= 0 && !__atomic_exchange_n(&e->conn_lost, 0, __ATOMIC_ACQ_REL))
        sys_close(e->conn);
    e->conn = -1;
}

/* ---- fork ---------------------------------------------------------------------------------- */

static void atfork_prepare(void)
{
    pthread_mutex_lock(&table_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&table_lock);
}

/*
 * In the child only the forking thread survives: mutexes held by other threads would stay locked
 * forever, and in-flight refs belong to threads that do not exist. The child's copies of our
 * private connections are closed now, while their numbers are certainly still ours, so that the
 * child's next request opens its own connection instead of sharing the parent's stream.
 */
static void atfork_child(void)
{
    static const pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    for (int i = 0; i < MAX_TRACKED; i++) {
        struct nsm_entry *e = table[i];
        if (e == NULL)
            continue;
        e->io = fresh;
        e->refs = 1;
        drop_conn(e);
    }
    table_lock = fresh;
}

static void install_atfork(void)
{
    /* Resolved now: the child handler closes through it and should not be the first caller. */
    (void)real_close();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ---- the fd table -------------------------------------------------------------------------- */

static int any_tracked(void)
{
    return __atomic_load_n(&tracked_count, __ATOMIC_ACQUIRE) != 0;
}

static void free_entry(struct nsm_entry *e)
{
    drop_conn(e);
    pthread_mutex_destroy(&e->io);
    free(e);
}

static void remove_slot_locked(int i)
{
    table[i] = NULL;
    __atomic_sub_fetch(&tracked_count, 1, __ATOMIC_RELEASE);
}

/*
 * The kernel just handed out `fd`, so any of our entries still holding that number lost it behind
 * our back (close_range, dup2 onto it, a raw syscall). Such numbers belong to someone else now:
 * never send frames to them and never close them. A stale entry leaves the table; its connection
 * may or may not still be ours, so it is leaked rather than risk closing a stranger's fd.
 * Returns an entry the caller must free, or NULL.
 */
static struct nsm_entry *forget_number_locked(int fd)
{
    struct nsm_entry *stale = NULL;
    for (int i = 0; i < MAX_TRACKED; i++) {
        struct nsm_entry *e = table[i];
        if (e == NULL)
            continue;
        if (e->conn == fd || e->fd == fd)
            __atomic_store_n(&e->conn_lost, 1, __ATOMIC_RELEASE);
        if (e->fd == fd) {
            remove_slot_locked(i);
            if (--e->refs == 0)
                stale = e;
        }
    }
    return stale;
}

static void note_new_fd(int fd)
{
    if (fd < 0 || !any_tracked())
        return;
    pthread_mutex_lock(&table_lock);
    struct nsm_entry *stale = forget_number_locked(fd);
    pthread_mutex_unlock(&table_lock);
    if (stale != NULL)
        free_entry(stale);
}

/* Take a reference on fd's entry, or NULL if fd is not an NSM fd. */
static struct nsm_entry *acquire(int fd)
{
    if (!any_tracked())
        return NULL;
    struct nsm_entry *found = NULL;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (table[i] != NULL && table[i]->fd == fd) {
            found = table[i];
            found->refs++;
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
    return found;
}

static void release(struct nsm_entry *e)
{
    pthread_mutex_lock(&table_lock);
    int last = --e->refs == 0;
    pthread_mutex_unlock(&table_lock);
    if (last)
        free_entry(e);
}

/* ---- talking to the emulator --------------------------------------------------------------- */

static int connect_emulator(const char *sock_path)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, sock_path, strlen(sock_path) + 1);
    int rc;
    do {
        rc = connect(s, (struct sockaddr *)&addr, sizeof(addr));
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        int saved = errno;
        sys_close(s);
        errno = saved;
        return -1;
    }
    return s;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Wait for fd to be ready; 0, or -1 with errno (ETIMEDOUT past the deadline). */
static int wait_ready(int fd, short events, long deadline)
{
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = events, .revents = 0};
        int rc = poll(&p, 1, left > 60000L ? 60000 : (int)left);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/*
 * MSG_DONTWAIT plus poll, rather than blocking calls: the program may set O_NONBLOCK on its fd
 * (it shares our connection's file status flags), and the deadline must hold either way.
 * MSG_NOSIGNAL: a dead emulator must give EIO, not kill the program with SIGPIPE.
 */
static int send_all(int fd, const uint8_t *p, size_t n, long deadline)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_ready(fd, POLLOUT, deadline) < 0)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

static int recv_all(int fd, uint8_t *p, size_t n, long deadline)
{
    while (n > 0) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r == 0) {
            errno = ECONNRESET; /* the emulator closed the connection */
            return -1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_ready(fd, POLLIN, deadline) < 0)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* One request/answer pair; the answer's length, or -1 with errno ETIMEDOUT or EIO. */
static long exchange(struct nsm_entry *e, const void *request, uint32_t request_len,
                     uint8_t answer[NSM_RESPONSE_MAX])
{
    uint8_t frame[FRAME_HEADER + NSM_REQUEST_MAX];
    frame[0] = (uint8_t)(request_len >> 24);
    frame[1] = (uint8_t)(request_len >> 16);
    frame[2] = (uint8_t)(request_len >> 8);
    frame[3] = (uint8_t)request_len;
    if (request_len > 0)
        memcpy(frame + FRAME_HEADER, request, request_len);

    long deadline = now_ms() + e->timeout_ms;
    uint8_t header[FRAME_HEADER];
    if (send_all(e->conn, frame, FRAME_HEADER + (size_t)request_len, deadline) < 0 ||
        recv_all(e->conn, header, FRAME_HEADER, deadline) < 0)
        goto broken;
    uint32_t answer_len = ((uint32_t)header[0] << 24) | ((uint32_t)header[1] << 16) |
                          ((uint32_t)header[2] << 8) | (uint32_t)header[3];
    /* The device cannot write more than the 0x3000-byte buffer it is given. */
    if (answer_len > NSM_RESPONSE_MAX) {
        errno = EIO;
        goto broken;
    }
    if (recv_all(e->conn, answer, answer_len, deadline) < 0)
        goto broken;
    return (long)answer_len;

broken: {
    int err = errno == ETIMEDOUT ? ETIMEDOUT : EIO;
    drop_conn(e);
    errno = err;
    return -1;
}
}

/* The body of drivers/misc/nsm.c:nsm_dev_ioctl, with the emulator in place of the virtqueue. */
static int nsm_ioctl(struct nsm_entry *e, unsigned long request, void *arg)
{
    /* The driver's cmd parameter is an unsigned int: the upper bits never reach the compare. */
    if ((unsigned int)request != NSM_IOCTL_RAW) {
        errno = EINVAL;
        return -1;
    }
    /* Launder the pointer: the compiler may not assume a caller-supplied address is valid. */
    __asm__("" : "+r"(arg));
    if (arg == NULL) {
        errno = EFAULT;
        return -1;
    }
    struct nsm_raw raw;
    memcpy(&raw, arg, sizeof(raw));

    pthread_mutex_lock(&e->io);
    int rc = -1;
    int err = 0;
    if (raw.request.len > NSM_REQUEST_MAX) {
        err = EMSGSIZE;
        goto out;
    }
    if ((raw.request.len > 0 && raw.request.addr == 0) ||
        (raw.response.len > 0 && raw.response.addr == 0)) {
        err = EFAULT;
        goto out;
    }
    if (__atomic_load_n(&e->conn_lost, __ATOMIC_ACQUIRE))
        drop_conn(e);
    if (e->conn < 0) {
        int c = connect_emulator(e->sock_path);
        if (c < 0) {
            err = EIO;
            goto out;
        }
        note_new_fd(c);
        e->conn = c;
    }
    uint8_t answer[NSM_RESPONSE_MAX];
    long answer_len =
        exchange(e, (const void *)(uintptr_t)raw.request.addr, (uint32_t)raw.request.len, answer);
    if (answer_len < 0) {
        err = errno;
        goto out;
    }
    /* Silent truncation to the caller's buffer, exactly as parse_resp_raw() does. */
    uint64_t n = raw.response.len < (uint64_t)answer_len ? raw.response.len : (uint64_t)answer_len;
    if (n > 0)
        memcpy((void *)(uintptr_t)raw.response.addr, answer, (size_t)n);
    raw.response.len = n;
    memcpy(arg, &raw, sizeof(raw));
    rc = 0;
out:
    pthread_mutex_unlock(&e->io);
    if (rc < 0)
        errno = err;
    return rc;
}

/* ---- open ---------------------------------------------------------------------------------- */

static int is_nsm_path(const char *path)
{
    /* open() is declared nonnull; launder so a NULL path still reaches libc (EFAULT), not us. */
    __asm__("" : "+r"(path));
    return path != NULL && strcmp(path, NSM_PATH) == 0;
}

static long configured_timeout(void)
{
    const char *s = getenv(TIMEOUT_ENV);
    if (s == NULL || *s == '\0')
        return NSM_TIMEOUT_MS;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return (end != NULL && *end == '\0' && v > 0) ? v : NSM_TIMEOUT_MS;
}

static int open_device(int flags)
{
    pthread_once(&atfork_once, install_atfork);

    const char *spec = getenv(EMULATOR_ENV);
    size_t scheme_len = strlen(EMULATOR_SCHEME);
    const char *sock_path = NULL;
    if (spec != NULL && strncmp(spec, EMULATOR_SCHEME, scheme_len) == 0)
        sock_path = spec + scheme_len;
    if (sock_path == NULL || *sock_path == '\0' ||
        strlen(sock_path) >= sizeof(((struct nsm_entry *)0)->sock_path)) {
        dprintf(STDERR_FILENO,
                "nsm_preload: cannot open " NSM_PATH ": set " EMULATOR_ENV
                "=unix:PATH to the socket of `nsm emulator serve --socket PATH`%s\n",
                spec == NULL ? "" : " (the value is not of that form)");
        errno = ENOENT;
        return -1;
    }

    int s = connect_emulator(sock_path);
    if (s < 0) {
        int saved = errno;
        dprintf(STDERR_FILENO,
                "nsm_preload: cannot open " NSM_PATH ": no NSM emulator at %s (%s); is "
                "`nsm emulator serve --socket %s` running?\n",
                sock_path, strerror(saved), sock_path);
        /* What the kernel says for a device node with no device behind it. */
        errno = ENXIO;
        return -1;
    }
    int conn = fcntl(s, F_DUPFD_CLOEXEC, 0);
    struct nsm_entry *e = conn < 0 ? NULL : calloc(1, sizeof(*e));
    if (e == NULL) {
        int saved = errno;
        if (conn >= 0)
            sys_close(conn);
        sys_close(s);
        errno = saved;
        return -1;
    }
    /* The socket was made CLOEXEC so no concurrent fork+exec can leak it; honor the caller. */
    if (!(flags & O_CLOEXEC))
        fcntl(s, F_SETFD, 0);
    e->fd = s;
    e->conn = conn;
    e->refs = 1;
    e->timeout_ms = configured_timeout();
    pthread_mutex_init(&e->io, NULL);
    memcpy(e->sock_path, sock_path, strlen(sock_path) + 1);

    pthread_mutex_lock(&table_lock);
    struct nsm_entry *stale_fd = forget_number_locked(s);
    struct nsm_entry *stale_conn = forget_number_locked(conn);
    int slot = -1;
    for (int i = 0; i < MAX_TRACKED && slot < 0; i++)
        if (table[i] == NULL)
            slot = i;
    if (slot >= 0) {
        table[slot] = e;
        __atomic_add_fetch(&tracked_count, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&table_lock);
    if (stale_fd != NULL)
        free_entry(stale_fd);
    if (stale_conn != NULL)
        free_entry(stale_conn);
    if (slot < 0) {
        free_entry(e);
        sys_close(s);
        errno = EMFILE;
        return -1;
    }
    return s;
}

static int needs_mode(int flags)
{
    return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
}

static int missing(void)
{
    errno = ENOSYS;
    return -1;
}

/* openat's dirfd does not matter for an absolute path, so only the string is compared. */
#define OPEN_BODY(real_call)                                                                     \
    do {                                                                                         \
        if (is_nsm_path(path))                                                                   \
            return open_device(flags);                                                           \
        int fd_ = (real_call);                                                                   \
        note_new_fd(fd_);                                                                        \
        return fd_;                                                                              \
    } while (0)

#define MODE_ARG()                                                                               \
    mode_t mode = 0;                                                                             \
    if (needs_mode(flags)) {                                                                     \
        va_list ap;                                                                              \
        va_start(ap, flags);                                                                     \
        mode = va_arg(ap, mode_t);                                                               \
        va_end(ap);                                                                              \
    }

int open(const char *path, int flags, ...)
{
    MODE_ARG();
    open_fn fn = real_open();
    OPEN_BODY(fn ? fn(path, flags, mode) : missing());
}

int open64(const char *path, int flags, ...)
{
    MODE_ARG();
    open_fn fn = real_open64();
    OPEN_BODY(fn ? fn(path, flags, mode) : missing());
}

int openat(int dirfd, const char *path, int flags, ...)
{
    MODE_ARG();
    openat_fn fn = real_openat();
    OPEN_BODY(fn ? fn(dirfd, path, flags, mode) : missing());
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    MODE_ARG();
    openat_fn fn = real_openat64();
    OPEN_BODY(fn ? fn(dirfd, path, flags, mode) : missing());
}

int __open_2(const char *path, int flags)
{
    open2_fn fn = real___open_2();
    OPEN_BODY(fn ? fn(path, flags) : missing());
}

int __open64_2(const char *path, int flags)
{
    open2_fn fn = real___open64_2();
    OPEN_BODY(fn ? fn(path, flags) : missing());
}

int __openat_2(int dirfd, const char *path, int flags)
{
    openat2_fn fn = real___openat_2();
    OPEN_BODY(fn ? fn(dirfd, path, flags) : missing());
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    openat2_fn fn = real___openat64_2();
    OPEN_BODY(fn ? fn(dirfd, path, flags) : missing());
}

/* ---- close and ioctl ----------------------------------------------------------------------- */

int close(int fd)
{
    if (any_tracked()) {
        struct nsm_entry *gone = NULL;
        pthread_mutex_lock(&table_lock);
        for (int i = 0; i < MAX_TRACKED; i++) {
            struct nsm_entry *e = table[i];
            if (e != NULL && e->fd == fd) {
                remove_slot_locked(i);
                if (--e->refs == 0)
                    gone = e;
                break;
            }
        }
        pthread_mutex_unlock(&table_lock);
        /* An ioctl in flight holds a reference and frees the entry when it returns. */
        if (gone != NULL)
            free_entry(gone);
    }
    return sys_close(fd);
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    /* Every ioctl takes at most one pointer-sized argument; libc forwards it the same way. */
    void *arg = va_arg(ap, void *);
    va_end(ap);

    struct nsm_entry *e = acquire(fd);
    if (e == NULL) {
        ioctl_fn fn = real_ioctl();
        return fn ? fn(fd, request, arg) : missing();
    }
    /* The VFS answers these before any driver sees the call, so they act on the fd itself. */
    if (request == FIOCLEX || request == FIONCLEX || request == FIONBIO) {
        release(e);
        ioctl_fn fn = real_ioctl();
        return fn ? fn(fd, request, arg) : missing();
    }
    int rc = nsm_ioctl(e, request, arg);
    int saved = errno;
    release(e);
    errno = saved;
    return rc;
}
