/* fstat on the fd and stat on the path describe the kernel's misc device: a 0666 character
 * device 10:260 owned by root, the same node either way; F_GETFL shows the open's access mode. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "nsm_test.h"

static void show(const char *name, int rc, const struct stat *st)
{
    if (rc != 0) {
        REPORT(name, rc);
        return;
    }
    printf("%s chr=%d mode=%o rdev=%u:%u uid=%u ino=%lu size=%ld\n", name, S_ISCHR(st->st_mode),
           st->st_mode & 07777, major(st->st_rdev), minor(st->st_rdev), st->st_uid,
           (unsigned long)st->st_ino, (long)st->st_size);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open("/dev/nsm", O_RDONLY);
    struct stat st;
    show("fstat", fstat(fd, &st), &st);
    show("stat", stat("/dev/nsm", &st), &st);
    show("lstat", lstat("/dev/nsm", &st), &st);
    show("fstatat", fstatat(AT_FDCWD, "/dev/nsm", &st, 0), &st);
    show("fstatat_empty", fstatat(fd, "", &st, AT_EMPTY_PATH), &st);
    struct statx sx;
    int rc = statx(AT_FDCWD, "/dev/nsm", 0, STATX_BASIC_STATS, &sx);
    if (rc == 0)
        printf("statx chr=%d mode=%o rdev=%u:%u\n", S_ISCHR(sx.stx_mode), sx.stx_mode & 07777,
               sx.stx_rdev_major, sx.stx_rdev_minor);
    else
        REPORT("statx", rc);
    rc = statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx);
    if (rc == 0)
        printf("statx_fd chr=%d rdev=%u:%u\n", S_ISCHR(sx.stx_mode), sx.stx_rdev_major,
               sx.stx_rdev_minor);
    else
        REPORT("statx_fd", rc);
    int wr = open("/dev/nsm", O_WRONLY);
    int rw = open("/dev/nsm", O_RDWR | O_NONBLOCK);
    printf("getfl %d %d %d nonblock=%d\n", fcntl(fd, F_GETFL) & O_ACCMODE,
           fcntl(wr, F_GETFL) & O_ACCMODE, fcntl(rw, F_GETFL) & O_ACCMODE,
           (fcntl(rw, F_GETFL) & O_NONBLOCK) != 0);
    REPORT("ioctl_after", ask(fd, "ioctl_after"));
    return 0;
}
