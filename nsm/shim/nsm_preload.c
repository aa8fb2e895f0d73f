/*
 * nsm_preload.c: an LD_PRELOAD library that turns /dev/nsm into the NSM emulator's Unix socket.
 *
 *   cc -shared -fPIC -O2 -Wall -Wextra -Werror -o libnsm_preload.so nsm_preload.c -ldl
 *   NSM_EMULATOR=unix:/tmp/nsm.sock LD_PRELOAD=$PWD/libnsm_preload.so your-program
 *
 * open("/dev/nsm") connects to the emulator and returns the socket; ioctl(fd, NSM_IOCTL_RAW, &raw)
 * on that fd sends raw.request as one frame (4-byte big-endian length, then the CBOR bytes, see
 * nsm/_framing.py) and copies the answer frame back with the in-tree driver's exact semantics
 * (drivers/misc/nsm.c): unknown cmd -> EINVAL, a struct or request the process cannot read ->
 * EFAULT, request over 0x1000 -> EMSGSIZE, the answer silently truncated to response.len,
 * response.len the only field changed, and a response buffer the process cannot write -> EFAULT
 * *after* the request ran (the driver copies back last).
 *
 * The fd looks like the kernel's misc device to everything that inspects it: fstat/stat/lstat/
 * fstatat/statx report a 0666 character device 10:260 (what Debian's 6.12 kernel registered for
 * the driver's dynamic minor), access/faccessat see a 0666 node, read/write and their vector and
 * positional forms fail as the VFS fails them for a file without read/write operations (EINVAL,
 * or EBADF against the open mode). Any spelling of the path that resolves to /dev/nsm is the
 * device ("/dev//nsm", "/dev/./nsm", "nsm" relative to a /dev dirfd or cwd). dup, dup2, dup3,
 * fcntl(F_DUPFD[_CLOEXEC]) copies share the device, and an fd inherited across exec is recognised
 * by the new program: each device socket is bound to an abstract Unix address that names it
 * (NSM_MARKER below), which survives fork, exec and dup where no in-process table would.
 *
 * Known limits: the program must reach libc through the dynamic symbols (Go's runtime and static
 * binaries make raw syscalls and bypass any preload); glibc's internal calls (fopen's open, the
 * stat inside realpath) are not interposable; binaries linked against glibc < 2.33 call
 * __xstat/__fxstat, which are not covered; poll/select/send/recv/getsockopt on the fd still see
 * the socket; a symlink elsewhere that points at /dev/nsm is not followed; an NSM fd closed
 * behind our back (a raw syscall) stays in the table until its number is handed out again by one
 * of the calls below.
 */

#define _GNU_SOURCE
/* Fortified headers turn open() into an inline wrapper, which would clash with our definition. */
#undef _FORTIFY_SOURCE

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define NSM_PATH "/dev/nsm"
#define NSM_DIR "/dev"
#define NSM_NAME "nsm"
/* _IOWR(0x0A, 0, struct nsm_raw) from include/uapi/linux/nsm.h. */
#define NSM_IOCTL_RAW 0xC0200A00u
/* NSM_REQUEST_MAX_SIZE and NSM_RESPONSE_MAX_SIZE in drivers/misc/nsm.c. */
#define NSM_REQUEST_MAX 0x1000u
#define NSM_RESPONSE_MAX 0x3000u
/* NSM_DEFAULT_TIMEOUT_MSECS in drivers/misc/nsm.c: the driver gives up with ETIMEDOUT after it. */
#define NSM_TIMEOUT_MS 120000L
/* The misc major, and the dynamic minor Debian's 6.12 kernel gave the driver under QEMU
 * (`crw-rw-rw- 10, 260`); the driver registers MISC_DYNAMIC_MINOR with mode 0666. */
#define NSM_MAJOR 10
#define NSM_MINOR 260
#define NSM_MODE 0666
/* An inode number for the node; any fixed value keeps fstat(fd) and stat(path) consistent. */
#define NSM_INO 0x4e534dul
/* Environment: the emulator address (same variable and syntax as nsm/_transport.py). */
#define EMULATOR_ENV "NSM_EMULATOR"
#define EMULATOR_SCHEME "unix:"
/* Environment: a shorter answer timeout in milliseconds, so tests need not wait two minutes. */
#define TIMEOUT_ENV "NSM_PRELOAD_TIMEOUT_MS"
/* The abstract-namespace name every device socket is bound to: "\0" NSM_MARKER "<mode>/<pid>/<n>".
 * <mode> is the open's access mode (0, 1, 2), which read/write need after an exec too. */
#define NSM_MARKER "nsm_preload/"
/* Open NSM fds one process can hold; a program needs one, a threaded one a few. */
#define MAX_TRACKED 128
/* fds below this have a lock-free "maybe ours" bit, so read/write on other fds stay cheap. */
#define HINT_FDS 4096
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
/* x86_64 and aarch64 (the Nitro platforms) define stat64 as stat; one filler serves both. */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "struct stat64 must equal stat");

/* The glibc fortify entry points; no public header declares them once fortify is off. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
int fcntl64(int fd, int cmd, ...);

/*
 * One open file description of /dev/nsm, shared by every fd that dup() made from it (the kernel's
 * struct file). `conn` is our own CLOEXEC connection to the emulator, so an ioctl in flight keeps
 * a valid socket even if another thread closes the program's fd. conn < 0 means "connect before
 * the next request": after a fork or an exec (two processes must not interleave frames on one
 * stream) and after a broken exchange (the stream is out of step; the device recovers per call).
 */
struct nsm_file {
    int conn;
    int refs; /* fds in the table + ioctls in flight; guarded by table_lock */
    int conn_lost; /* atomic: conn's number was closed behind our back and handed out again */
    int accmode; /* O_RDONLY, O_WRONLY or O_RDWR, as the program opened it */
    long timeout_ms;
    pthread_mutex_t io; /* serializes requests, like the driver's per-device mutex */
    char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

struct slot {
    int fd;
    struct nsm_file *file;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct slot table[MAX_TRACKED];
/* Read without the lock as a fast path: while it is 0 no fd of this process is ours. */
static int tracked_count;
/* hint[fd] != 0 while fd may be in the table (set and cleared under table_lock). */
static unsigned char hint[HINT_FDS];
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static unsigned long marker_counter;

/* ---- the real functions, resolved on first use ------------------------------------------- */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*close_fn)(int);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef int (*dup_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
typedef int (*fcntl_fn)(int, int, ...);
typedef int (*close_range_fn)(unsigned int, unsigned int, int);
typedef ssize_t (*read_fn)(int, void *, size_t);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pread_fn)(int, void *, size_t, off_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*readv_fn)(int, const struct iovec *, int);
typedef ssize_t (*preadv_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*preadv2_fn)(int, const struct iovec *, int, off_t, int);
typedef int (*fstat_fn)(int, struct stat *);
typedef int (*stat_fn)(const char *, struct stat *);
typedef int (*fstatat_fn)(int, const char *, struct stat *, int);
typedef int (*statx_fn)(int, const char *, int, unsigned int, struct statx *);
typedef int (*access_fn)(const char *, int);
typedef int (*faccessat_fn)(int, const char *, int, int);

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
REAL(dup_fn, dup)
REAL(dup2_fn, dup2)
REAL(dup3_fn, dup3)
REAL(fcntl_fn, fcntl)
REAL(fcntl_fn, fcntl64)
REAL(close_range_fn, close_range)
REAL(read_fn, read)
REAL(write_fn, write)
REAL(pread_fn, pread)
REAL(pread_fn, pread64)
REAL(pwrite_fn, pwrite)
REAL(pwrite_fn, pwrite64)
REAL(readv_fn, readv)
REAL(readv_fn, writev)
REAL(preadv_fn, preadv)
REAL(preadv_fn, preadv64)
REAL(preadv_fn, pwritev)
REAL(preadv_fn, pwritev64)
REAL(preadv2_fn, preadv2)
REAL(preadv2_fn, pwritev2)
REAL(fstat_fn, fstat)
REAL(fstat_fn, fstat64)
REAL(stat_fn, stat)
REAL(stat_fn, stat64)
REAL(stat_fn, lstat)
REAL(stat_fn, lstat64)
REAL(fstatat_fn, fstatat)
REAL(fstatat_fn, fstatat64)
REAL(statx_fn, statx)
REAL(access_fn, access)
REAL(access_fn, eaccess)
REAL(access_fn, euidaccess)
REAL(faccessat_fn, faccessat)

static int missing(void)
{
    errno = ENOSYS;
    return -1;
}

static int fail(int err)
{
    errno = err;
    return -1;
}

static int sys_close(int fd)
{
    close_fn fn = real_close();
    return fn == NULL ? missing() : fn(fd);
}

/* Forget our connection; close it only if its number is still ours. */
static void drop_conn(struct nsm_file *f)
{
    if (f->conn >= 0 && !__atomic_exchange_n(&f->conn_lost, 0, __ATOMIC_ACQ_REL))
        sys_close(f->conn);
    f->conn = -1;
}

static void free_file(struct nsm_file *f)
{
    drop_conn(f);
    pthread_mutex_destroy(&f->io);
    free(f);
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
    for (int i = 0; i < MAX_TRACKED; i++)
        if (table[i].file != NULL)
            table[i].file->refs = 0;
    for (int i = 0; i < MAX_TRACKED; i++) {
        struct nsm_file *f = table[i].file;
        if (f == NULL)
            continue;
        if (f->refs++ == 0) {
            f->io = fresh;
            drop_conn(f);
        }
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

static int maybe_tracked(int fd)
{
    if (__atomic_load_n(&tracked_count, __ATOMIC_ACQUIRE) == 0 || fd < 0)
        return 0;
    return fd >= HINT_FDS || __atomic_load_n(&hint[fd], __ATOMIC_ACQUIRE) != 0;
}

/* Drop one reference (table_lock held); returns the file if the caller must free it. */
static struct nsm_file *unref_locked(struct nsm_file *f)
{
    return --f->refs == 0 ? f : NULL;
}

static void clear_slot_locked(int i)
{
    if (table[i].fd < HINT_FDS)
        __atomic_store_n(&hint[table[i].fd], 0, __ATOMIC_RELEASE);
    table[i].fd = -1;
    table[i].file = NULL;
    __atomic_sub_fetch(&tracked_count, 1, __ATOMIC_RELEASE);
}

/* Put fd -> f in the table (table_lock held), taking a reference; 0, or -1 when full. */
static int add_slot_locked(int fd, struct nsm_file *f)
{
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (table[i].file == NULL) {
            table[i].fd = fd;
            table[i].file = f;
            f->refs++;
            if (fd < HINT_FDS)
                __atomic_store_n(&hint[fd], 1, __ATOMIC_RELEASE);
            __atomic_add_fetch(&tracked_count, 1, __ATOMIC_RELEASE);
            return 0;
        }
    }
    return -1;
}

/*
 * The numbers lo..hi were just closed or handed out by the kernel, so our entries holding them
 * lost them (close_range, dup2 onto one, a raw close followed by a new open). Such numbers belong
 * to someone else now: never send frames to them and never close them. At most `cap` files whose
 * last reference went are stored in `dead` for the caller to free outside the lock.
 */
static int forget_range_locked(unsigned int lo, unsigned int hi, struct nsm_file **dead, int cap)
{
    int n = 0;
    for (int i = 0; i < MAX_TRACKED; i++) {
        struct nsm_file *f = table[i].file;
        if (f == NULL)
            continue;
        if (f->conn >= 0 && (unsigned int)f->conn >= lo && (unsigned int)f->conn <= hi)
            __atomic_store_n(&f->conn_lost, 1, __ATOMIC_RELEASE);
        if ((unsigned int)table[i].fd >= lo && (unsigned int)table[i].fd <= hi) {
            clear_slot_locked(i);
            struct nsm_file *gone = unref_locked(f);
            if (gone != NULL && n < cap)
                dead[n++] = gone;
        }
    }
    return n;
}

static void forget_range(unsigned int lo, unsigned int hi)
{
    if (__atomic_load_n(&tracked_count, __ATOMIC_ACQUIRE) == 0)
        return;
    struct nsm_file *dead[MAX_TRACKED];
    pthread_mutex_lock(&table_lock);
    int n = forget_range_locked(lo, hi, dead, MAX_TRACKED);
    pthread_mutex_unlock(&table_lock);
    for (int i = 0; i < n; i++)
        free_file(dead[i]);
}

static void note_new_fd(int fd)
{
    if (fd >= 0)
        forget_range((unsigned int)fd, (unsigned int)fd);
}

/* Take a reference on fd's file, or NULL if fd is not an NSM fd. */
static struct nsm_file *acquire(int fd)
{
    if (!maybe_tracked(fd))
        return NULL;
    struct nsm_file *found = NULL;
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (table[i].file != NULL && table[i].fd == fd) {
            found = table[i].file;
            found->refs++;
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
    return found;
}

static void release(struct nsm_file *f)
{
    pthread_mutex_lock(&table_lock);
    struct nsm_file *gone = unref_locked(f);
    pthread_mutex_unlock(&table_lock);
    if (gone != NULL)
        free_file(gone);
}

/* fd's open mode if it is an NSM fd, else -1. */
static int nsm_accmode(int fd)
{
    struct nsm_file *f = acquire(fd);
    if (f == NULL)
        return -1;
    int mode = f->accmode;
    release(f);
    return mode;
}

/* newfd is now a copy of oldfd (dup, dup2, dup3, F_DUPFD): share oldfd's file, if it is ours. */
static void note_dup(int oldfd, int newfd)
{
    if (newfd < 0)
        return;
    note_new_fd(newfd);
    struct nsm_file *f = acquire(oldfd);
    if (f == NULL)
        return;
    pthread_mutex_lock(&table_lock);
    int full = add_slot_locked(newfd, f);
    pthread_mutex_unlock(&table_lock);
    if (full < 0)
        dprintf(STDERR_FILENO, "nsm_preload: too many NSM fds; fd %d is not tracked\n", newfd);
    release(f);
}

static struct nsm_file *new_file(const char *sock_path, int conn, int accmode);

/* ---- talking to the emulator --------------------------------------------------------------- */

/*
 * Bind a device socket to its marker name before connecting, so that whoever holds a copy of it
 * (a dup, an exec'd program) can tell it from any other socket with one getsockname.
 */
static int bind_marker(int s, int accmode)
{
    struct sockaddr_un addr;
    for (int attempt = 0; attempt < 8; attempt++) {
        memset(&addr, 0, sizeof(addr));
        addr.sun_family = AF_UNIX;
        unsigned long n = __atomic_add_fetch(&marker_counter, 1, __ATOMIC_RELAXED);
        int len = snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, NSM_MARKER "%d/%ld/%lu",
                           accmode, (long)getpid(), n);
        socklen_t size = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
        if (bind(s, (struct sockaddr *)&addr, size) == 0)
            return 0;
        if (errno != EADDRINUSE) /* a name left by a forked child that kept the socket */
            return -1;
    }
    return -1;
}

/* The marker's access mode if s is a device socket (ours or inherited), else -1. */
static int marker_accmode(int s)
{
    struct sockaddr_un addr;
    socklen_t size = sizeof(addr);
    if (getsockname(s, (struct sockaddr *)&addr, &size) < 0 || addr.sun_family != AF_UNIX)
        return -1;
    size_t prefix = strlen(NSM_MARKER);
    size_t have = size > offsetof(struct sockaddr_un, sun_path)
                      ? size - offsetof(struct sockaddr_un, sun_path)
                      : 0;
    if (have < 1 + prefix + 1 || addr.sun_path[0] != '\0' ||
        memcmp(addr.sun_path + 1, NSM_MARKER, prefix) != 0)
        return -1;
    int mode = addr.sun_path[1 + prefix] - '0';
    return (mode == O_RDONLY || mode == O_WRONLY || mode == O_RDWR) ? mode : -1;
}

/* accmode < 0: a private connection, no marker. */
static int connect_emulator(const char *sock_path, int accmode)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    if (accmode >= 0 && bind_marker(s, accmode) < 0) {
        int saved = errno;
        sys_close(s);
        return fail(saved);
    }
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
        return fail(saved);
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

/*
 * One request/answer pair. `frame` holds FRAME_HEADER free bytes, then the request_len request
 * bytes (already copied from the caller). Returns the answer's length, or -1 with errno ETIMEDOUT
 * or EIO.
 */
static long exchange(struct nsm_file *f, uint8_t *frame, uint32_t request_len,
                     uint8_t answer[NSM_RESPONSE_MAX])
{
    frame[0] = (uint8_t)(request_len >> 24);
    frame[1] = (uint8_t)(request_len >> 16);
    frame[2] = (uint8_t)(request_len >> 8);
    frame[3] = (uint8_t)request_len;

    long deadline = now_ms() + f->timeout_ms;
    uint8_t header[FRAME_HEADER];
    if (send_all(f->conn, frame, FRAME_HEADER + (size_t)request_len, deadline) < 0 ||
        recv_all(f->conn, header, FRAME_HEADER, deadline) < 0)
        goto broken;
    uint32_t answer_len = ((uint32_t)header[0] << 24) | ((uint32_t)header[1] << 16) |
                          ((uint32_t)header[2] << 8) | (uint32_t)header[3];
    /* The device cannot write more than the 0x3000-byte buffer it is given. */
    if (answer_len > NSM_RESPONSE_MAX) {
        errno = EIO;
        goto broken;
    }
    if (recv_all(f->conn, answer, answer_len, deadline) < 0)
        goto broken;
    return (long)answer_len;

broken: {
    int err = errno == ETIMEDOUT ? ETIMEDOUT : EIO;
    drop_conn(f);
    return fail(err);
}
}

/* ---- copy_from_user / copy_to_user --------------------------------------------------------- */

/*
 * The kernel copies through the caller's page tables and reports a bad address as EFAULT; a plain
 * memcpy would crash the program with SIGSEGV instead. process_vm_readv/writev on our own pid do
 * the same checked copy in one syscall. Where they are refused (a seccomp filter, ENOSYS), a pipe
 * does it: write(2) reads the source and read(2) writes the destination, both checked by the
 * kernel. n == 0 never faults, whatever the address, as in the kernel.
 */
static int pipe_copy(void *dst, const void *src, size_t n)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        return -1;
    int rc = 0;
    /* A pipe always holds at least one page, so each chunk fits without blocking. */
    for (size_t done = 0; done < n && rc == 0;) {
        size_t chunk = n - done < 4096 ? n - done : 4096;
        long w = syscall(SYS_write, p[1], (const char *)src + done, chunk);
        long r = w == (long)chunk ? syscall(SYS_read, p[0], (char *)dst + done, chunk) : -1;
        if (r != (long)chunk)
            rc = -1;
        done += chunk;
    }
    sys_close(p[0]);
    sys_close(p[1]);
    return rc < 0 ? fail(EFAULT) : 0;
}

static int copy_user(void *dst, const void *src, size_t n, int to_user)
{
    if (n == 0)
        return 0;
    struct iovec local = {.iov_base = to_user ? (void *)src : dst, .iov_len = n};
    struct iovec remote = {.iov_base = to_user ? dst : (void *)src, .iov_len = n};
    ssize_t got = to_user ? process_vm_writev(getpid(), &local, 1, &remote, 1, 0)
                          : process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    if (got == (ssize_t)n)
        return 0;
    if (got >= 0 || errno == EFAULT)
        return fail(EFAULT);
    return pipe_copy(dst, src, n);
}

static int copy_from_user(void *dst, uint64_t src, size_t n)
{
    return copy_user(dst, (const void *)(uintptr_t)src, n, 0);
}

static int copy_to_user(uint64_t dst, const void *src, size_t n)
{
    return copy_user((void *)(uintptr_t)dst, src, n, 1);
}

/* ---- the ioctl ----------------------------------------------------------------------------- */

/* The body of drivers/misc/nsm.c:nsm_dev_ioctl, with the emulator in place of the virtqueue. */
static int nsm_ioctl(struct nsm_file *f, unsigned long request, void *arg)
{
    /* The driver's cmd parameter is an unsigned int: the upper bits never reach the compare. */
    if ((unsigned int)request != NSM_IOCTL_RAW)
        return fail(EINVAL);
    struct nsm_raw raw;
    if (copy_from_user(&raw, (uint64_t)(uintptr_t)arg, sizeof(raw)) < 0)
        return fail(EFAULT);

    pthread_mutex_lock(&f->io);
    int err = 0;
    uint8_t frame[FRAME_HEADER + NSM_REQUEST_MAX];
    uint8_t answer[NSM_RESPONSE_MAX];
    /* fill_req_raw: the size first, then the copy. */
    if (raw.request.len > NSM_REQUEST_MAX) {
        err = EMSGSIZE;
        goto out;
    }
    if (copy_from_user(frame + FRAME_HEADER, raw.request.addr, (size_t)raw.request.len) < 0) {
        err = EFAULT;
        goto out;
    }
    if (__atomic_load_n(&f->conn_lost, __ATOMIC_ACQUIRE))
        drop_conn(f);
    if (f->conn < 0) {
        int c = connect_emulator(f->sock_path, -1);
        if (c < 0) {
            err = EIO;
            goto out;
        }
        note_new_fd(c);
        f->conn = c;
    }
    long answer_len = exchange(f, frame, (uint32_t)raw.request.len, answer);
    if (answer_len < 0) {
        err = errno;
        goto out;
    }
    /* parse_resp_raw: silent truncation to the caller's buffer; the request has run by now, so
     * a buffer that cannot be written fails the call after the module acted on it. */
    raw.response.len = raw.response.len < (uint64_t)answer_len ? raw.response.len
                                                               : (uint64_t)answer_len;
    if (copy_to_user(raw.response.addr, answer, (size_t)raw.response.len) < 0 ||
        copy_to_user((uint64_t)(uintptr_t)arg, &raw, sizeof(raw)) < 0)
        err = EFAULT;
out:
    pthread_mutex_unlock(&f->io);
    return err ? fail(err) : 0;
}

/* ---- the device node ----------------------------------------------------------------------- */

/* The emulator socket from NSM_EMULATOR, or NULL when the variable is missing or malformed. */
static const char *emulator_socket(void)
{
    const char *spec = getenv(EMULATOR_ENV);
    size_t scheme_len = strlen(EMULATOR_SCHEME);
    if (spec == NULL || strncmp(spec, EMULATOR_SCHEME, scheme_len) != 0)
        return NULL;
    const char *path = spec + scheme_len;
    if (*path == '\0' || strlen(path) >= sizeof(((struct nsm_file *)0)->sock_path))
        return NULL;
    return path;
}

enum { NOT_NSM = 0, IS_NSM = 1, NSM_AS_DIR = 2 };

/*
 * Does `path` (relative to dirfd, as openat reads it) name /dev/nsm? The last component must be
 * "nsm" (a cheap test that settles almost every call); the directory part is then resolved on the
 * real filesystem, so "//dev/nsm", "/dev/./nsm", "/tmp/../dev/nsm" and "nsm" with cwd or dirfd in
 * /dev all match. "/dev/nsm/" names the device as a directory (ENOTDIR, as the kernel says).
 */
static int nsm_path_kind(int dirfd, const char *path)
{
    /* Callers' prototypes say nonnull; launder so a NULL path still reaches libc (EFAULT). */
    __asm__("" : "+r"(path));
    if (path == NULL)
        return NOT_NSM;
    size_t len = strlen(path);
    size_t end = len;
    while (end > 0 && path[end - 1] == '/')
        end--;
    size_t name = end;
    while (name > 0 && path[name - 1] != '/')
        name--;
    if (end - name != strlen(NSM_NAME) || memcmp(path + name, NSM_NAME, end - name) != 0)
        return NOT_NSM;
    char dir[PATH_MAX];
    size_t used = 0;
    if (path[0] != '/') {
        if (dirfd == AT_FDCWD) {
            if (getcwd(dir, sizeof(dir)) == NULL)
                return NOT_NSM;
        } else {
            char link[64];
            snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(link, dir, sizeof(dir) - 1);
            if (n <= 0)
                return NOT_NSM;
            dir[n] = '\0';
        }
        used = strlen(dir);
        if (used + 1 >= sizeof(dir))
            return NOT_NSM;
        dir[used++] = '/';
    }
    if (used + name + 1 > sizeof(dir))
        return NOT_NSM;
    memcpy(dir + used, path, name);
    dir[used + name] = '\0';
    if (dir[0] == '\0')
        return NOT_NSM;
    char resolved[PATH_MAX];
    char dev[PATH_MAX];
    if (realpath(dir, resolved) == NULL || realpath(NSM_DIR, dev) == NULL ||
        strcmp(resolved, dev) != 0)
        return NOT_NSM;
    return end == len ? IS_NSM : NSM_AS_DIR;
}

/* What the kernel reports for the node: a 0666 character device on devtmpfs, root-owned. */
static void fill_stat(struct stat *st)
{
    struct stat dev;
    stat_fn real = real_stat();
    if (real == NULL || real(NSM_DIR, &dev) != 0)
        memset(&dev, 0, sizeof(dev));
    memset(st, 0, sizeof(*st));
    st->st_dev = dev.st_dev;
    st->st_ino = NSM_INO;
    st->st_mode = S_IFCHR | NSM_MODE;
    st->st_nlink = 1;
    st->st_rdev = makedev(NSM_MAJOR, NSM_MINOR);
    st->st_blksize = 4096;
    /* devtmpfs stamps a node when the driver registers it, around boot: /dev's times are close. */
    st->st_atim = dev.st_ctim;
    st->st_mtim = dev.st_ctim;
    st->st_ctim = dev.st_ctim;
}

static void fill_statx(struct statx *sx, unsigned int mask)
{
    (void)mask;
    struct stat st;
    fill_stat(&st);
    memset(sx, 0, sizeof(*sx));
    sx->stx_mask = STATX_BASIC_STATS;
    sx->stx_blksize = (uint32_t)st.st_blksize;
    sx->stx_nlink = (uint32_t)st.st_nlink;
    sx->stx_mode = (uint16_t)st.st_mode;
    sx->stx_ino = st.st_ino;
    sx->stx_atime.tv_sec = st.st_atim.tv_sec;
    sx->stx_atime.tv_nsec = (uint32_t)st.st_atim.tv_nsec;
    sx->stx_mtime = sx->stx_atime;
    sx->stx_ctime = sx->stx_atime;
    sx->stx_rdev_major = NSM_MAJOR;
    sx->stx_rdev_minor = NSM_MINOR;
    sx->stx_dev_major = major(st.st_dev);
    sx->stx_dev_minor = minor(st.st_dev);
}

/* A path lookup of /dev/nsm: 1 = answered as the device, 0 = not ours (ask libc), -1 = errno. */
static int path_lookup(int dirfd, const char *path)
{
    int kind = nsm_path_kind(dirfd, path);
    if (kind == NOT_NSM || emulator_socket() == NULL)
        return 0;
    return kind == NSM_AS_DIR ? fail(ENOTDIR) : 1;
}

/* access(2) on the node: 0666, so F_OK, R_OK and W_OK pass and X_OK fails, even for root. */
static int node_access(int mode)
{
    return (mode & X_OK) ? fail(EACCES) : 0;
}

/* ---- open ---------------------------------------------------------------------------------- */

static long configured_timeout(void)
{
    const char *s = getenv(TIMEOUT_ENV);
    if (s == NULL || *s == '\0')
        return NSM_TIMEOUT_MS;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return (end != NULL && *end == '\0' && v > 0) ? v : NSM_TIMEOUT_MS;
}

static struct nsm_file *new_file(const char *sock_path, int conn, int accmode)
{
    struct nsm_file *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->conn = conn;
    f->accmode = accmode;
    f->timeout_ms = configured_timeout();
    pthread_mutex_init(&f->io, NULL);
    memcpy(f->sock_path, sock_path, strlen(sock_path) + 1);
    return f;
}

/* Track fd -> f; on success the table holds the only reference. */
static int track(int fd, struct nsm_file *f)
{
    struct nsm_file *dead[MAX_TRACKED];
    pthread_mutex_lock(&table_lock);
    int n = forget_range_locked((unsigned int)fd, (unsigned int)fd, dead, MAX_TRACKED);
    if (f->conn >= 0)
        n += forget_range_locked((unsigned int)f->conn, (unsigned int)f->conn, dead + n,
                                 MAX_TRACKED - n);
    int full = add_slot_locked(fd, f);
    pthread_mutex_unlock(&table_lock);
    for (int i = 0; i < n; i++)
        free_file(dead[i]);
    return full;
}

static int open_device(int kind, int flags)
{
    pthread_once(&atfork_once, install_atfork);

    const char *spec = getenv(EMULATOR_ENV);
    const char *sock_path = emulator_socket();
    if (sock_path == NULL) {
        dprintf(STDERR_FILENO,
                "nsm_preload: cannot open " NSM_PATH ": set " EMULATOR_ENV
                "=unix:PATH to the socket of `nsm emulator serve --socket PATH`%s\n",
                spec == NULL ? "" : " (the value is not of that form)");
        return fail(ENOENT);
    }
    /* What path lookup decides before any driver is involved. */
    if (kind == NSM_AS_DIR || (flags & O_DIRECTORY))
        return fail(ENOTDIR);
    if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL))
        return fail(EEXIST);
    int accmode = flags & O_ACCMODE;
    if (accmode == O_ACCMODE) /* Linux's "no access" mode 3 still opens; keep it as read/write */
        accmode = O_RDWR;

    int s = connect_emulator(sock_path, accmode);
    if (s < 0) {
        int saved = errno;
        dprintf(STDERR_FILENO,
                "nsm_preload: cannot open " NSM_PATH ": no NSM emulator at %s (%s); is "
                "`nsm emulator serve --socket %s` running?\n",
                sock_path, strerror(saved), sock_path);
        /* What the kernel says for a device node with no device behind it. */
        return fail(ENXIO);
    }
    int conn = fcntl(s, F_DUPFD_CLOEXEC, 0);
    struct nsm_file *f = conn < 0 ? NULL : new_file(sock_path, conn, accmode);
    if (f == NULL) {
        int saved = errno;
        if (conn >= 0)
            sys_close(conn);
        sys_close(s);
        return fail(saved);
    }
    /* The socket was made CLOEXEC so no concurrent fork+exec can leak it; honor the caller. */
    if (!(flags & O_CLOEXEC))
        fcntl(s, F_SETFD, 0);
    /* The open file's status flag, as F_GETFL reports it; our own I/O never blocks on it. */
    if (flags & O_NONBLOCK)
        fcntl(s, F_SETFL, O_NONBLOCK);
    if (track(s, f) < 0) {
        free_file(f);
        sys_close(s);
        return fail(EMFILE);
    }
    return s;
}

/*
 * After exec, the device fds the old program left open (no O_CLOEXEC) are sockets whose marker
 * says what they are; adopt them so that the new program sees the same device. Their private
 * connections closed on exec, so each reconnects on its first request, to the socket it was
 * connected to (the emulator of the program that opened it).
 */
__attribute__((constructor)) static void adopt_inherited(void)
{
    int dfd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    char buf[4096];
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *)(buf + off);
            off += d->d_reclen;
            char *end = NULL;
            long fd = strtol(d->d_name, &end, 10);
            if (end == d->d_name || *end != '\0' || fd == dfd || fd > INT_MAX)
                continue;
            int accmode = marker_accmode((int)fd);
            if (accmode < 0)
                continue;
            struct sockaddr_un peer;
            socklen_t size = sizeof(peer);
            memset(&peer, 0, sizeof(peer));
            if (getpeername((int)fd, (struct sockaddr *)&peer, &size) < 0 ||
                peer.sun_path[0] == '\0')
                continue;
            peer.sun_path[sizeof(peer.sun_path) - 1] = '\0';
            pthread_once(&atfork_once, install_atfork);
            struct nsm_file *f = new_file(peer.sun_path, -1, accmode);
            if (f != NULL && track((int)fd, f) < 0)
                free_file(f);
        }
    }
    sys_close(dfd);
}

static int needs_mode(int flags)
{
    return (flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE;
}

/* openat's dirfd only matters for a relative path; nsm_path_kind reads it the same way. */
#define OPEN_BODY(dirfd, real_call)                                                              \
    do {                                                                                         \
        int kind_ = nsm_path_kind((dirfd), path);                                                \
        if (kind_ == IS_NSM || (kind_ == NSM_AS_DIR && emulator_socket() != NULL))               \
            return open_device(kind_, flags);                                                    \
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
    OPEN_BODY(AT_FDCWD, fn ? fn(path, flags, mode) : missing());
}

int open64(const char *path, int flags, ...)
{
    MODE_ARG();
    open_fn fn = real_open64();
    OPEN_BODY(AT_FDCWD, fn ? fn(path, flags, mode) : missing());
}

int openat(int dirfd, const char *path, int flags, ...)
{
    MODE_ARG();
    openat_fn fn = real_openat();
    OPEN_BODY(dirfd, fn ? fn(dirfd, path, flags, mode) : missing());
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    MODE_ARG();
    openat_fn fn = real_openat64();
    OPEN_BODY(dirfd, fn ? fn(dirfd, path, flags, mode) : missing());
}

int __open_2(const char *path, int flags)
{
    open2_fn fn = real___open_2();
    OPEN_BODY(AT_FDCWD, fn ? fn(path, flags) : missing());
}

int __open64_2(const char *path, int flags)
{
    open2_fn fn = real___open64_2();
    OPEN_BODY(AT_FDCWD, fn ? fn(path, flags) : missing());
}

int __openat_2(int dirfd, const char *path, int flags)
{
    openat2_fn fn = real___openat_2();
    OPEN_BODY(dirfd, fn ? fn(dirfd, path, flags) : missing());
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    openat2_fn fn = real___openat64_2();
    OPEN_BODY(dirfd, fn ? fn(dirfd, path, flags) : missing());
}

/* ---- close, dup and fcntl ------------------------------------------------------------------ */

int close(int fd)
{
    forget_range((unsigned int)fd, (unsigned int)fd);
    return sys_close(fd);
}

int close_range(unsigned int first, unsigned int last, int flags)
{
    close_range_fn fn = real_close_range();
    int rc = fn ? fn(first, last, flags) : missing();
    /* CLOSE_RANGE_CLOEXEC only marks the fds; everything else closed them. */
    if (rc == 0 && !(flags & CLOSE_RANGE_CLOEXEC))
        forget_range(first, last);
    return rc;
}

int dup(int oldfd)
{
    dup_fn fn = real_dup();
    int fd = fn ? fn(oldfd) : missing();
    note_dup(oldfd, fd);
    return fd;
}

int dup2(int oldfd, int newfd)
{
    dup2_fn fn = real_dup2();
    int fd = fn ? fn(oldfd, newfd) : missing();
    /* dup2(fd, fd) changes nothing; anything else closed newfd first. */
    if (fd >= 0 && oldfd != newfd)
        note_dup(oldfd, fd);
    return fd;
}

int dup3(int oldfd, int newfd, int flags)
{
    dup3_fn fn = real_dup3();
    int fd = fn ? fn(oldfd, newfd, flags) : missing();
    note_dup(oldfd, fd);
    return fd;
}

/*
 * fcntl's third argument is an int or a pointer depending on cmd; glibc forwards it as one
 * pointer-sized value, and so do we. F_DUPFD copies share the device; F_GETFL reports the access
 * mode of the open instead of the socket's O_RDWR.
 */
static int fcntl_common(fcntl_fn fn, int fd, int cmd, void *arg)
{
    int rc = fn ? fn(fd, cmd, arg) : missing();
    if (rc < 0)
        return rc;
    if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) {
        note_dup(fd, rc);
    } else if (cmd == F_GETFL) {
        int mode = nsm_accmode(fd);
        if (mode >= 0)
            rc = (rc & ~O_ACCMODE) | mode;
    }
    return rc;
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(real_fcntl(), fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return fcntl_common(real_fcntl64(), fd, cmd, arg);
}

/* ---- ioctl --------------------------------------------------------------------------------- */

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    /* Every ioctl takes at most one pointer-sized argument; libc forwards it the same way. */
    void *arg = va_arg(ap, void *);
    va_end(ap);

    struct nsm_file *f = acquire(fd);
    /* The VFS answers these before any driver sees the call, so they act on the fd itself. */
    if (f != NULL && (request == FIOCLEX || request == FIONCLEX || request == FIONBIO)) {
        release(f);
        f = NULL;
    }
    if (f == NULL) {
        ioctl_fn fn = real_ioctl();
        return fn ? fn(fd, request, arg) : missing();
    }
    int rc = nsm_ioctl(f, request, arg);
    int saved = errno;
    release(f);
    errno = saved;
    return rc;
}

/* ---- read and write ------------------------------------------------------------------------ */

/*
 * The driver has no read or write operation. vfs_read/vfs_write check the open mode first
 * (EBADF when the fd was not opened for that direction), then the missing operation (EINVAL).
 * -1 with errno for an NSM fd, 0 for any other fd.
 */
static int refuse_io(int fd, int writing)
{
    if (!maybe_tracked(fd))
        return 0;
    int mode = nsm_accmode(fd);
    if (mode < 0)
        return 0;
    int allowed = writing ? mode != O_RDONLY : mode != O_WRONLY;
    return fail(allowed ? EINVAL : EBADF);
}

#define IO_BODY(writing, real_fn, ...)                                                           \
    do {                                                                                         \
        if (refuse_io(fd, (writing)) < 0)                                                        \
            return -1;                                                                           \
        __typeof__(real_fn()) fn_ = real_fn();                                                   \
        return fn_ ? fn_(__VA_ARGS__) : missing();                                               \
    } while (0)

ssize_t read(int fd, void *buf, size_t n)
{
    IO_BODY(0, real_read, fd, buf, n);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    IO_BODY(1, real_write, fd, buf, n);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off)
{
    IO_BODY(0, real_pread, fd, buf, n, off);
}

ssize_t pread64(int fd, void *buf, size_t n, off_t off)
{
    IO_BODY(0, real_pread64, fd, buf, n, off);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    IO_BODY(1, real_pwrite, fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    IO_BODY(1, real_pwrite64, fd, buf, n, off);
}

ssize_t readv(int fd, const struct iovec *iov, int count)
{
    IO_BODY(0, real_readv, fd, iov, count);
}

ssize_t writev(int fd, const struct iovec *iov, int count)
{
    IO_BODY(1, real_writev, fd, iov, count);
}

ssize_t preadv(int fd, const struct iovec *iov, int count, off_t off)
{
    IO_BODY(0, real_preadv, fd, iov, count, off);
}

ssize_t preadv64(int fd, const struct iovec *iov, int count, off_t off)
{
    IO_BODY(0, real_preadv64, fd, iov, count, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t off)
{
    IO_BODY(1, real_pwritev, fd, iov, count, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int count, off_t off)
{
    IO_BODY(1, real_pwritev64, fd, iov, count, off);
}

ssize_t preadv2(int fd, const struct iovec *iov, int count, off_t off, int flags)
{
    IO_BODY(0, real_preadv2, fd, iov, count, off, flags);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int count, off_t off, int flags)
{
    IO_BODY(1, real_pwritev2, fd, iov, count, off, flags);
}

/* ---- stat and access ----------------------------------------------------------------------- */

static int is_nsm_fd(int fd)
{
    return maybe_tracked(fd) && nsm_accmode(fd) >= 0;
}

static int stat_fd(fstat_fn fn, int fd, struct stat *st)
{
    if (is_nsm_fd(fd)) {
        fill_stat(st);
        return 0;
    }
    return fn ? fn(fd, st) : missing();
}

int fstat(int fd, struct stat *st)
{
    return stat_fd(real_fstat(), fd, st);
}

int fstat64(int fd, struct stat64 *st)
{
    return stat_fd(real_fstat64(), fd, (struct stat *)st);
}

static int stat_path(stat_fn fn, const char *path, struct stat *st)
{
    int found = path_lookup(AT_FDCWD, path);
    if (found > 0)
        fill_stat(st);
    if (found != 0)
        return found > 0 ? 0 : -1;
    return fn ? fn(path, st) : missing();
}

/* /dev/nsm is no symlink, so lstat and stat agree on it. */
int stat(const char *path, struct stat *st)
{
    return stat_path(real_stat(), path, st);
}

int stat64(const char *path, struct stat64 *st)
{
    return stat_path(real_stat64(), path, (struct stat *)st);
}

int lstat(const char *path, struct stat *st)
{
    return stat_path(real_lstat(), path, st);
}

int lstat64(const char *path, struct stat64 *st)
{
    return stat_path(real_lstat64(), path, (struct stat *)st);
}

/* An *at lookup: with AT_EMPTY_PATH, "" names dirfd itself. 1, 0 or -1 as path_lookup. */
static int lookup_at(int dirfd, const char *path, int flags)
{
    __asm__("" : "+r"(path));
    if ((flags & AT_EMPTY_PATH) && path != NULL && path[0] == '\0')
        return is_nsm_fd(dirfd);
    return path_lookup(dirfd, path);
}

static int stat_at(fstatat_fn fn, int dirfd, const char *path, struct stat *st, int flags)
{
    int found = lookup_at(dirfd, path, flags);
    if (found > 0)
        fill_stat(st);
    if (found != 0)
        return found > 0 ? 0 : -1;
    return fn ? fn(dirfd, path, st, flags) : missing();
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    return stat_at(real_fstatat(), dirfd, path, st, flags);
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    return stat_at(real_fstatat64(), dirfd, path, (struct stat *)st, flags);
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *sx)
{
    int found = lookup_at(dirfd, path, flags);
    if (found > 0)
        fill_statx(sx, mask);
    if (found != 0)
        return found > 0 ? 0 : -1;
    statx_fn fn = real_statx();
    return fn ? fn(dirfd, path, flags, mask, sx) : missing();
}

static int access_path(access_fn fn, const char *path, int mode)
{
    int found = path_lookup(AT_FDCWD, path);
    if (found != 0)
        return found > 0 ? node_access(mode) : -1;
    return fn ? fn(path, mode) : missing();
}

int access(const char *path, int mode)
{
    return access_path(real_access(), path, mode);
}

int eaccess(const char *path, int mode)
{
    return access_path(real_eaccess(), path, mode);
}

int euidaccess(const char *path, int mode)
{
    return access_path(real_euidaccess(), path, mode);
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
    int found = path_lookup(dirfd, path);
    if (found != 0)
        return found > 0 ? node_access(mode) : -1;
    faccessat_fn fn = real_faccessat();
    return fn ? fn(dirfd, path, mode, flags) : missing();
}
