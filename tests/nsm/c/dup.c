/* Copies of an NSM fd (dup, dup2, dup3, F_DUPFD, F_DUPFD_CLOEXEC) are the device too, the copy
 * outlives the original, and dup2 onto an NSM fd replaces it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>

#include "nsm_test.h"

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open("/dev/nsm", O_RDONLY | O_CLOEXEC);
    REPORT("open", fd);
    int d1 = dup(fd);
    REPORT("dup", ask(d1, "dup"));
    int d2 = dup2(fd, 100);
    REPORT("dup2", d2 == 100 ? ask(d2, "dup2") : -1);
    int d3 = dup3(fd, 101, O_CLOEXEC);
    REPORT("dup3", d3 == 101 ? ask(d3, "dup3") : -1);
    REPORT("dup3_cloexec", (fcntl(d3, F_GETFD) & FD_CLOEXEC) ? 1 : 0);
    int d4 = fcntl(fd, F_DUPFD, 200);
    REPORT("f_dupfd", d4 >= 200 ? ask(d4, "f_dupfd") : -1);
    int d5 = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    REPORT("f_dupfd_cloexec", ask(d5, "f_dupfd_cloexec"));
    REPORT("dup2_same", dup2(fd, fd) == fd ? ask(fd, "dup2_same") : -1);
    /* The kernel's file lives while any copy is open. */
    REPORT("close_original", close(fd));
    REPORT("after_close", ask(d1, "after_close"));
    /* dup2 onto an NSM fd closes it: the number now names a pipe, which has no NSM ioctl. */
    int p[2];
    if (pipe(p) != 0)
        return 2;
    REPORT("dup2_over", dup2(p[0], d2));
    REPORT("replaced", ask(d2, "replaced"));
    REPORT("others_live", ask(d5, "others_live"));
    REPORT("close_all", close(d1) | close(d3) | close(d4) | close(d5) | close(d2));
    return 0;
}
