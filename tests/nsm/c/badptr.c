/* Bad pointers give EFAULT as copy_from_user/copy_to_user do, never SIGSEGV; a response that
 * cannot be copied back fails only after the module ran the request, as in the driver. Each
 * request names its case, so the server's log shows which ones reached the module. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "nsm_test.h"

static uint8_t resp[0x3000];

static int call(int fd, const char *msg, uint64_t req, uint64_t resp_addr, uint64_t resp_len)
{
    struct nsm_raw raw = {{req ? req : (uintptr_t)msg, strlen(msg)}, {resp_addr, resp_len}};
    return ioctl(fd, NSM_IOCTL_RAW, &raw);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open("/dev/nsm", O_RDONLY);
    long page = sysconf(_SC_PAGESIZE);
    /* A usable page then an inaccessible one (PROT_NONE, so no later mmap can land there):
     * addresses that fault for certain. */
    uint8_t *area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                         -1, 0);
    mprotect(area + page, page, PROT_NONE);
    uint64_t unmapped = (uintptr_t)(area + page);
    uint8_t *ro = mmap(NULL, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    REPORT("struct_null", ioctl(fd, NSM_IOCTL_RAW, (void *)0));
    REPORT("struct_bad", ioctl(fd, NSM_IOCTL_RAW, (void *)(uintptr_t)unmapped));
    /* The struct straddles the end of the mapped page. */
    REPORT("struct_straddle", ioctl(fd, NSM_IOCTL_RAW, (void *)(area + page - 16)));
    REPORT("request_bad", call(fd, "request_bad", unmapped, (uintptr_t)resp, sizeof(resp)));
    /* The request's last bytes lie past the mapped page. */
    memcpy(area + page - 4, "requ", 4);
    struct nsm_raw raw = {{(uintptr_t)(area + page - 4), 8}, {(uintptr_t)resp, sizeof(resp)}};
    REPORT("request_straddle", ioctl(fd, NSM_IOCTL_RAW, &raw));
    REPORT("response_null", call(fd, "response_null", 0, 0, sizeof(resp)));
    REPORT("response_bad", call(fd, "response_bad", 0, unmapped, sizeof(resp)));
    REPORT("response_readonly", call(fd, "response_readonly", 0, (uintptr_t)ro, 64));
    /* A zero-length response never faults, whatever its address. */
    REPORT("response_null_empty", call(fd, "response_null_empty", 0, 0, 0));
    /* The struct itself is read-only: read fine, the write-back of response.len faults. */
    struct nsm_raw *ro_raw = (struct nsm_raw *)(ro + 128);
    mprotect(ro, page, PROT_READ | PROT_WRITE);
    const char *msg = "struct_readonly";
    *ro_raw = (struct nsm_raw){{(uintptr_t)msg, strlen(msg)}, {(uintptr_t)resp, sizeof(resp)}};
    mprotect(ro, page, PROT_READ);
    REPORT("struct_readonly", ioctl(fd, NSM_IOCTL_RAW, ro_raw));
    REPORT("still_works", ask(fd, "still_works"));
    return 0;
}
