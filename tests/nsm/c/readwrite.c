/* read and write (and their vector and positional forms) fail as the VFS fails them for a driver
 * without read/write operations: EBADF against the open mode, else EINVAL. Nothing reaches the
 * module: the next ioctl gets exactly its own answer. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "nsm_test.h"

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int ro = open("/dev/nsm", O_RDONLY);
    int wo = open("/dev/nsm", O_WRONLY);
    int rw = open("/dev/nsm", O_RDWR);
    char buf[16] = "injected";
    struct iovec iov = {buf, 8};
    REPORT("read_ro", read(ro, buf, sizeof(buf)));
    REPORT("read_ro_zero", read(ro, buf, 0));
    REPORT("read_wo", read(wo, buf, sizeof(buf)));
    REPORT("read_rw", read(rw, buf, sizeof(buf)));
    REPORT("write_ro", write(ro, buf, 8));
    REPORT("write_wo", write(wo, buf, 8));
    REPORT("write_rw", write(rw, buf, 8));
    REPORT("readv_rw", readv(rw, &iov, 1));
    REPORT("writev_rw", writev(rw, &iov, 1));
    REPORT("pread_rw", pread(rw, buf, 8, 0));
    REPORT("pwrite_rw", pwrite(rw, buf, 8, 0));
    REPORT("preadv_rw", preadv(rw, &iov, 1, 0));
    REPORT("pwritev_rw", pwritev(rw, &iov, 1, 0));
    /* The ioctl still works on every mode, and sees its own answer, not injected bytes. */
    REPORT("ioctl_ro", ask(ro, "ioctl_ro"));
    REPORT("ioctl_wo", ask(wo, "ioctl_wo"));
    REPORT("ioctl_rw", ask(rw, "ioctl_rw"));
    return 0;
}
