/*
 * driver.h - the small interface every I/O driver implements (internal to cext/).
 *
 * A driver instance is one device: the sim register file, one gpiochip, one SPI
 * thermocouple converter. The sampler calls read() then write() once per tick from
 * its own thread, so a driver must never block for long: slow devices (a MAX31856
 * converts in ~100 ms) poll at their own rate inside read() and return the cached
 * value with the time it was taken.
 */
#ifndef EC_DRIVER_H
#define EC_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#define EC_DRV_MAX_IO 64

typedef struct ec_driver ec_driver;

typedef struct ec_driver_ops {
    const char *name;
    /* parse params ("key=value;..."), open the device, set n_ai/n_di/n_do */
    int (*open)(ec_driver *d, const char *params, char *err, size_t errlen);
    /* refresh ai/ai_status/ai_t_ns and di/di_status; EC_EIO on failure */
    int (*read)(ec_driver *d);
    /* drive line i to levels[i] for every bit i set in mask */
    int (*write)(ec_driver *d, const uint8_t *levels, uint64_t mask);
    /* the driver's clock in ns (monotonic); NULL = CLOCK_MONOTONIC */
    int64_t (*clock_ns)(ec_driver *d);
    void (*close)(ec_driver *d);
} ec_driver_ops;

struct ec_driver {
    const ec_driver_ops *ops;
    void *priv;
    uint32_t n_ai, n_di, n_do;
    double ai[EC_DRV_MAX_IO];
    uint32_t ai_status[EC_DRV_MAX_IO]; /* EC_ST_* bits */
    int64_t ai_t_ns[EC_DRV_MAX_IO];    /* driver clock when taken; 0 = this tick */
    uint8_t di[EC_DRV_MAX_IO];
    uint32_t di_status[EC_DRV_MAX_IO];
};

extern const ec_driver_ops ec_driver_sim;
extern const ec_driver_ops ec_driver_gpiochip;
extern const ec_driver_ops ec_driver_spidev;

/* "key=value;key=value" parsing shared by the drivers (params.c).
 * Returns 1 and copies the value when the key is present, 0 when absent, EC_EINVAL when too long. */
int ec_param_get(const char *params, const char *key, char *out, size_t outlen);
/* Every key=value segment of params must name a key of the NULL-terminated `known` (at most 32), once:
 * a typo must fail at open, not leave a line unconfigured. EC_OK or EC_EINVAL with the reason. */
int ec_param_check_keys(const char *params, const char *const *known, char *err, size_t errlen);
/* Comma-separated non-negative integers; returns the count or EC_EINVAL. */
int ec_param_int_list(const char *value, int32_t *out, int max);

int64_t ec_monotonic_ns(void);
void ec_set_err(char *err, size_t errlen, const char *fmt, ...);

#endif
