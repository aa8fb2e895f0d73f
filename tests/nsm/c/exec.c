/* An NSM fd without O_CLOEXEC survives exec: the new program (this one again, with "child FD")
 * finds the device on the inherited number; one opened with O_CLOEXEC is gone. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nsm_test.h"

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 4 && strcmp(argv[1], "child") == 0) {
        int fd = atoi(argv[2]);
        int gone = atoi(argv[3]);
        REPORT("child_ioctl", ask(fd, "child"));
        struct stat st;
        REPORT("child_fstat", fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) ? 0 : -1);
        char buf[4];
        REPORT("child_read", read(fd, buf, sizeof(buf)));
        REPORT("child_cloexec_gone", fcntl(gone, F_GETFD));
        /* A dup of an inherited fd is the device too. */
        REPORT("child_dup", ask(dup(fd), "child_dup"));
        return 0;
    }
    int fd = open("/dev/nsm", O_RDONLY);
    int gone = open("/dev/nsm", O_RDONLY | O_CLOEXEC);
    REPORT("parent", ask(fd, "parent"));
    char fdarg[16], gonearg[16];
    snprintf(fdarg, sizeof(fdarg), "%d", fd);
    snprintf(gonearg, sizeof(gonearg), "%d", gone);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/proc/self/exe", argv[0], "child", fdarg, gonearg, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    REPORT("child_status", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    REPORT("parent_after", ask(fd, "parent_after"));
    return 0;
}
