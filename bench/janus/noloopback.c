/* Let Janus gather ICE candidates on the loopback interface, for benchmarks on 127.0.0.1.
 *
 * libnice skips interfaces flagged IFF_LOOPBACK; this LD_PRELOAD library clears the flag in
 * what getifaddrs() returns, so Janus (with ice_enforce_list = "lo") offers 127.0.0.1.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>

int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **) = NULL;
    if (real == NULL)
        real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int rc = real(ifap);
    if (rc == 0)
        for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next)
            i->ifa_flags &= ~IFF_LOOPBACK;
    return rc;
}
