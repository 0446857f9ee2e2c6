/* util.c - small helpers shared by the core and the drivers. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "driver.h"
#include "edge_core.h"

int64_t ec_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void ec_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *ec_strerror(int code)
{
    switch (code) {
    case EC_OK: return "ok";
    case EC_EINVAL: return "invalid argument";
    case EC_ERANGE: return "out of range";
    case EC_ESTATE: return "not allowed in this state";
    case EC_EIO: return "device I/O error";
    case EC_ENOMEM: return "out of memory";
    case EC_ENOTFOUND: return "not found";
    case EC_EFULL: return "table full";
    case EC_EREFUSED: return "refused by the output gate";
    case EC_ECONDITION: return "condition still holds";
    default: return "unknown error";
    }
}
