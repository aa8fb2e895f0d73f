/* Shared by the C test programs of the LD_PRELOAD shim (tests/nsm/test_shim_device.py). */
#ifndef NSM_TEST_H
#define NSM_TEST_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

/* include/uapi/linux/nsm.h, written out as any client program would: the tests must not share
 * the shim's own definitions. */
struct nsm_iovec {
    uint64_t addr;
    uint64_t len;
};
struct nsm_raw {
    struct nsm_iovec request;
    struct nsm_iovec response;
};
#define NSM_IOCTL_RAW 0xC0200A00u

/* One line per check, "NAME RC ERRNO": the Python side asserts the whole table at once. The
 * call is evaluated exactly once, before errno is read. */
static inline void report(const char *name, long rc)
{
    int err = rc < 0 ? errno : 0;
    printf("%s %ld %d\n", name, rc, err);
}
#define REPORT(name, call) report((name), (long)(call))

/* Send `msg` on fd; returns the ioctl's result. The fake server answers "re:" + msg. */
static inline int ask(int fd, const char *msg)
{
    static uint8_t resp[0x3000];
    struct nsm_raw raw = {{(uintptr_t)msg, strlen(msg)}, {(uintptr_t)resp, sizeof(resp)}};
    int rc = ioctl(fd, NSM_IOCTL_RAW, &raw);
    if (rc == 0 && (raw.response.len != strlen(msg) + 3 || memcmp(resp, "re:", 3) != 0 ||
                    memcmp(resp + 3, msg, strlen(msg)) != 0)) {
        errno = EPROTO; /* an answer, but not the one the server sent for this request */
        return -1;
    }
    return rc;
}

#endif
