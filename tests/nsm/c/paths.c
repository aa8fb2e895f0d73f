/* Every spelling of /dev/nsm opens the device; stat and access see the node; path errors are the
 * kernel's (ENOTDIR for the node used as a directory, EEXIST for O_CREAT|O_EXCL). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nsm_test.h"

static void try_open(const char *name, int dirfd, const char *path, int flags)
{
    int fd = openat(dirfd, path, flags);
    if (fd < 0) {
        REPORT(name, fd);
        return;
    }
    REPORT(name, ask(fd, name));
    close(fd);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2)
        return 2;
    /* argv[1]: a scratch directory holding a symlink "devlink" -> /dev */
    REPORT("access_f", access("/dev/nsm", F_OK));
    REPORT("access_rw", access("/dev/nsm", R_OK | W_OK));
    REPORT("access_x", access("/dev/nsm", X_OK));
    REPORT("faccessat", faccessat(AT_FDCWD, "/dev//nsm", R_OK, 0));
    REPORT("faccessat_eaccess", faccessat(AT_FDCWD, "/dev/nsm", W_OK, AT_EACCESS));
    struct stat st;
    REPORT("stat_double_slash", stat("/dev//nsm", &st) == 0 && S_ISCHR(st.st_mode) ? 0 : -1);
    REPORT("stat_trailing_slash", stat("/dev/nsm/", &st));
    REPORT("stat_missing", stat("/dev/nsm-not-here", &st));
    try_open("double_slash", AT_FDCWD, "/dev//nsm", O_RDONLY);
    try_open("leading_slashes", AT_FDCWD, "//dev/nsm", O_RDONLY);
    try_open("dot", AT_FDCWD, "/dev/./nsm", O_RDONLY);
    try_open("dotdot", AT_FDCWD, "/tmp/../dev/nsm", O_RDONLY);
    char via_link[4096];
    snprintf(via_link, sizeof(via_link), "%s/devlink/nsm", argv[1]);
    try_open("symlinked_dir", AT_FDCWD, via_link, O_RDONLY);
    int dev = open("/dev", O_RDONLY | O_DIRECTORY);
    try_open("dirfd_relative", dev, "nsm", O_RDONLY);
    int root = open("/", O_RDONLY | O_DIRECTORY);
    try_open("root_relative", root, "dev/nsm", O_RDONLY);
    REPORT("chdir", chdir("/dev"));
    try_open("cwd_relative", AT_FDCWD, "nsm", O_RDONLY);
    try_open("cwd_dot", AT_FDCWD, "./nsm", O_RDONLY);
    try_open("trailing_slash", AT_FDCWD, "/dev/nsm/", O_RDONLY);
    try_open("o_directory", AT_FDCWD, "/dev/nsm", O_RDONLY | O_DIRECTORY);
    try_open("o_creat_excl", AT_FDCWD, "/dev/nsm", O_RDWR | O_CREAT | O_EXCL);
    try_open("o_creat", AT_FDCWD, "/dev/nsm", O_RDWR | O_CREAT);
    return 0;
}
