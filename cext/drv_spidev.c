/*
 * drv_spidev.c - one SPI thermocouple converter (MAX31855 or MAX31856) through the
 * Linux spidev character device (/dev/spidevB.C).
 *
 * Params ("key=value;..."; unknown or repeated keys are refused, so a typo cannot
 * silently fall back to a default):
 *   dev=/dev/spidev0.0   required; the spidev node (bus B, chip select C)
 *   chip=max31855|max31856  required (no default: decoding the wrong chip's bytes
 *                        would give plausible but wrong temperatures)
 *   tc=K                 thermocouple type B,E,J,K,N,R,S,T (default K). MAX31856: written
 *                        to CR1. MAX31855: informational only, the type is fixed by the
 *                        part (MAX31855K/J/N/T/E/R/S; there is no B part)
 *   poll_ms=100          SPI read at most this often (default 100). MAX31855: >= 100,
 *                        because pulling CS low aborts the conversion in progress and a
 *                        conversion takes up to 100 ms: polling faster would freeze the
 *                        reading. MAX31856: >= 10 (it converts on its own in automatic
 *                        mode, ~100 ms or more per conversion)
 *   speed_hz=1000000     SCLK, 1 .. 5000000 (both chips are specified to 5 MHz)
 *   mode=0..3            SPI mode override; default 0 for the MAX31855 (data shifted
 *                        out on the falling edge, sampled on the rising one) and 1 for
 *                        the MAX31856 (it accepts modes 1 and 3 only)
 *   MAX31856 only (refused for the MAX31855, which has no such settings):
 *   avg=1                averaged samples per conversion: 1, 2, 4, 8 or 16
 *   mains=60             50 or 60: the notch of the noise filter (default 60, the chip's
 *                        power-on value; set mains=50 on 50 Hz plants)
 *   oc=1                 open-circuit detection mode 1..3 (CR0 OCFAULT; 1 = thermocouple
 *                        resistance < 5 kohm, 2/3 = 5..40 kohm with a filter time
 *                        constant below/above 2 ms). It cannot be turned off here.
 *   settle_ms=...        after writing the configuration, values are not trusted for
 *                        this long (default 250 + 40 * (avg - 1)): until the first
 *                        conversion completes, the data registers still hold zeros or
 *                        an old result. 0 .. 10000.
 *
 * Driver inputs: n_ai = 2, n_di = 0, n_do = 0.
 *   ai[0] thermocouple degC: MAX31855 = the chip's value (linear Seebeck approximation);
 *         MAX31856 = the chip's linearised value for `tc`.
 *   ai[1] cold-junction (chip) degC.
 *   ai_t_ns = ec_monotonic_ns() when the frame was read (clock_ns is NULL: the core's
 *   CLOCK_MONOTONIC).
 * Status (see max318xx.h for the bit mapping): ai[0] EC_ST_FAULT for open circuit,
 * short to VCC/GND (MAX31855) or input over/under voltage (MAX31856), EC_ST_RANGE for
 * the MAX31856 TC range / TC high / TC low faults and for a cold junction outside its
 * range; ai[1] EC_ST_RANGE for cold-junction range faults. EC_ST_NODATA before the
 * first trustworthy frame.
 *
 * One poll is one SPI_IOC_MESSAGE(1): MAX31855 4 bytes; MAX31856 the address byte 0x00
 * and registers 0x00..0x0F (the data 0x0A..0x0F plus CR0/CR1/MASK, to verify the chip
 * still holds its configuration).
 *
 * read() is called by the sampler every tick; it talks to the chip at most every
 * poll_ms and otherwise re-delivers the cached values, their timestamp and the return
 * code of the last poll. So a failed poll reports EC_EIO (and EC_ST_FAULT on both
 * inputs) until a later poll succeeds, and the bus is retried no faster than poll_ms.
 * A poll fails (EC_EIO) when the ioctl fails, when the MAX31855 frame cannot come
 * from a working chip (reserved bits set, all zero), or when the MAX31856 no longer
 * holds the configuration written at open (power glitch: it resets to "normally off",
 * which would freeze the readings); the configuration is then written again and the
 * values are FAULT until settle_ms has passed.
 *
 * open() probes the chip: a MAX31855 frame that no chip can send, or a MAX31856 that
 * does not read back its configuration, refuses the open with the bytes seen.
 * write() accepts only an empty mask (there are no outputs).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/spi/spidev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "edge_core.h"
#include "max318xx.h"
#include "sys_seam.h"

/* ------------------------------------------------------------------ decoding */

static int32_t sign_extend(uint32_t v, unsigned bits)
{
    uint32_t sign = 1u << (bits - 1);
    uint32_t mask = (bits == 32) ? 0xFFFFFFFFu : ((1u << bits) - 1u);
    v &= mask;
    return (v & sign) ? (int32_t)v - (int32_t)(sign << 1) : (int32_t)v;
}

int ec_max31855_decode(uint32_t frame, double *tc_c, double *cj_c, uint32_t *tc_status,
                       uint32_t *cj_status)
{
    if (tc_c == NULL || cj_c == NULL || tc_status == NULL || cj_status == NULL) {
        return EC_EINVAL;
    }
    *tc_c = sign_extend(frame >> 18, 14) * 0.25;
    *cj_c = sign_extend(frame >> 4, 12) * 0.0625;
    uint32_t tcs = EC_ST_OK;
    uint32_t cjs = EC_ST_OK;
    if (frame & (EC_MAX31855_FAULT | EC_MAX31855_SCV | EC_MAX31855_SCG | EC_MAX31855_OC)) {
        tcs |= EC_ST_FAULT;
    }
    if (*cj_c < EC_MAX318XX_CJ_MIN_C || *cj_c > EC_MAX318XX_CJ_MAX_C) {
        cjs |= EC_ST_RANGE;
        tcs |= EC_ST_RANGE;
    }
    int rc = EC_OK;
    if ((frame & (EC_MAX31855_RES17 | EC_MAX31855_RES3)) != 0 || frame == 0) {
        tcs = EC_ST_FAULT;
        cjs = EC_ST_FAULT;
        rc = EC_EIO;
    }
    *tc_status = tcs;
    *cj_status = cjs;
    return rc;
}

int ec_max31856_decode(const uint8_t regs[6], double *tc_c, double *cj_c, uint32_t *tc_status,
                       uint32_t *cj_status)
{
    if (regs == NULL || tc_c == NULL || cj_c == NULL || tc_status == NULL || cj_status == NULL) {
        return EC_EINVAL;
    }
    uint32_t cj = ((uint32_t)regs[0] << 8) | regs[1];
    uint32_t tc = ((uint32_t)regs[2] << 16) | ((uint32_t)regs[3] << 8) | regs[4];
    *cj_c = sign_extend(cj >> 2, 14) * 0.015625;
    *tc_c = sign_extend(tc >> 5, 19) * 0.0078125;
    uint8_t sr = regs[5];
    uint32_t tcs = EC_ST_OK;
    uint32_t cjs = EC_ST_OK;
    if (sr & (EC_MAX31856_SR_OPEN | EC_MAX31856_SR_OVUV)) {
        tcs |= EC_ST_FAULT;
    }
    if (sr & (EC_MAX31856_SR_TCRANGE | EC_MAX31856_SR_TCHIGH | EC_MAX31856_SR_TCLOW |
              EC_MAX31856_SR_CJRANGE)) {
        tcs |= EC_ST_RANGE;
    }
    if (sr & (EC_MAX31856_SR_CJRANGE | EC_MAX31856_SR_CJHIGH | EC_MAX31856_SR_CJLOW)) {
        cjs |= EC_ST_RANGE;
    }
    *tc_status = tcs;
    *cj_status = cjs;
    return EC_OK;
}

int ec_max31856_tc_code(char tc_type)
{
    static const char types[] = "BEJKNRST";
    char t = tc_type;
    if (t >= 'a' && t <= 'z') {
        t = (char)(t - 'a' + 'A');
    }
    for (int i = 0; types[i] != '\0'; i++) {
        if (types[i] == t) {
            return i;
        }
    }
    return EC_EINVAL;
}

int ec_max31856_cr0(int mains_hz, int oc_mode, uint8_t *cr0)
{
    if (cr0 == NULL || (mains_hz != 50 && mains_hz != 60) || oc_mode < 0 || oc_mode > 3) {
        return EC_EINVAL;
    }
    uint8_t v = EC_MAX31856_CR0_CMODE | (uint8_t)(oc_mode << EC_MAX31856_CR0_OCFAULT_SHIFT);
    if (mains_hz == 50) {
        v |= EC_MAX31856_CR0_50HZ;
    }
    *cr0 = v;
    return EC_OK;
}

int ec_max31856_cr1(char tc_type, int avg, uint8_t *cr1)
{
    int code = ec_max31856_tc_code(tc_type);
    int avgsel;
    switch (avg) {
    case 1: avgsel = 0; break;
    case 2: avgsel = 1; break;
    case 4: avgsel = 2; break;
    case 8: avgsel = 3; break;
    case 16: avgsel = 4; break;
    default: avgsel = -1; break;
    }
    if (cr1 == NULL || code < 0 || avgsel < 0) {
        return EC_EINVAL;
    }
    *cr1 = (uint8_t)((avgsel << EC_MAX31856_CR1_AVGSEL_SHIFT) | code);
    return EC_OK;
}

/* ------------------------------------------------------------------ driver */

#define CHIP_MAX31855 31855
#define CHIP_MAX31856 31856
#define SPI_MAX_HZ 5000000L
/* MASK written at open: OPEN and OVUV drive the FAULT pin (useful if it is wired to a
 * hardware interlock); the threshold faults stay masked, their thresholds are left at
 * the power-on extremes. Bits 7:6 written as at power-on. */
#define MAX31856_MASK_VALUE ((uint8_t)(0xFF & ~(EC_MAX31856_SR_OPEN | EC_MAX31856_SR_OVUV)))

typedef struct spi_priv {
    int fd;
    int chip;
    char dev[256];
    char tc;
    uint32_t speed_hz;
    uint8_t mode;
    uint8_t cr0, cr1, mask;
    int64_t poll_ns;
    int64_t settle_ns;
    int64_t settle_until_ns; /* MAX31856: values not trusted before this */
    int in_settle_after_open;
    int polled;              /* a poll has produced the cached result */
    int64_t last_poll_ns;
    int last_rc;
    double val[2];
    uint32_t st[2];
    int64_t t_ns[2];
} spi_priv;

static const char *const spi_keys[] = {"dev", "chip", "tc", "poll_ms", "speed_hz", "mode",
                                       "avg", "mains", "oc", "settle_ms", NULL};


/* strict decimal in [min, max]; returns 1 when present, 0 when absent, EC_EINVAL */
static int param_long(const char *params, const char *key, long min, long max, long *out,
                      char *err, size_t errlen)
{
    char buf[32];
    int r = ec_param_get(params, key, buf, sizeof buf);
    if (r == 0) {
        return 0;
    }
    int ok = (r == 1 && buf[0] != '\0');
    long v = 0;
    for (const char *c = buf; ok && *c != '\0'; c++) {
        if (*c < '0' || *c > '9' || v > 100000000L) {
            ok = 0;
        } else {
            v = v * 10 + (*c - '0');
        }
    }
    if (!ok || v < min || v > max) {
        ec_set_err(err, errlen, "%s=%s is not valid: expected an integer %ld..%ld", key,
                   r == 1 ? buf : "(too long)", min, max);
        return EC_EINVAL;
    }
    *out = v;
    return 1;
}

static int spi_xfer(spi_priv *p, const uint8_t *tx, uint8_t *rx, uint32_t len, int *err_no)
{
    struct spi_ioc_transfer x;
    memset(&x, 0, sizeof x);
    x.tx_buf = (uint64_t)(uintptr_t)tx;
    x.rx_buf = (uint64_t)(uintptr_t)rx;
    x.len = len;
    x.speed_hz = p->speed_hz;
    x.bits_per_word = 8;
    int r = ec_sys.ioctl(p->fd, SPI_IOC_MESSAGE(1), &x);
    if (r < 0) {
        *err_no = errno;
        return EC_EIO;
    }
    if ((uint32_t)r != len) {
        *err_no = EIO; /* short transfer */
        return EC_EIO;
    }
    return EC_OK;
}

/* write CR0 (conversions stopped, so the filter may change), CR1 + MASK, then CR0 */
static int max31856_configure(spi_priv *p, int *err_no)
{
    uint8_t off[2] = {EC_MAX31856_WRITE | EC_MAX31856_REG_CR0, (uint8_t)(p->cr0 & ~EC_MAX31856_CR0_CMODE)};
    uint8_t cfg[3] = {EC_MAX31856_WRITE | EC_MAX31856_REG_CR1, p->cr1, p->mask};
    uint8_t on[2] = {EC_MAX31856_WRITE | EC_MAX31856_REG_CR0, p->cr0};
    uint8_t rx[3];
    if (spi_xfer(p, off, rx, 2, err_no) != EC_OK || spi_xfer(p, cfg, rx, 3, err_no) != EC_OK ||
        spi_xfer(p, on, rx, 2, err_no) != EC_OK) {
        return EC_EIO;
    }
    return EC_OK;
}

static int max31856_config_ok(const spi_priv *p, const uint8_t *regs)
{
    return regs[EC_MAX31856_REG_CR0] == p->cr0 &&
           (regs[EC_MAX31856_REG_CR1] & 0x7F) == p->cr1 &&
           (regs[EC_MAX31856_REG_MASK] & EC_MAX31856_MASK_BITS) == (p->mask & EC_MAX31856_MASK_BITS);
}

/* one read of all 16 registers; regs[i] = register i */
static int max31856_read_all(spi_priv *p, uint8_t regs[EC_MAX31856_NREGS], int *err_no)
{
    uint8_t tx[1 + EC_MAX31856_NREGS] = {0};
    uint8_t rx[1 + EC_MAX31856_NREGS] = {0};
    tx[0] = EC_MAX31856_REG_CR0;
    int rc = spi_xfer(p, tx, rx, sizeof tx, err_no);
    if (rc == EC_OK) {
        memcpy(regs, rx + 1, EC_MAX31856_NREGS);
    }
    return rc;
}

static int max31855_read(spi_priv *p, uint32_t *frame, int *err_no)
{
    uint8_t tx[4] = {0};
    uint8_t rx[4] = {0};
    int rc = spi_xfer(p, tx, rx, 4, err_no);
    if (rc == EC_OK) {
        *frame = ((uint32_t)rx[0] << 24) | ((uint32_t)rx[1] << 16) | ((uint32_t)rx[2] << 8) | rx[3];
    }
    return rc;
}

static void spi_free(spi_priv *p)
{
    if (p == NULL) {
        return;
    }
    if (p->fd >= 0) {
        ec_sys.close(p->fd);
        p->fd = -1;
    }
    free(p);
}

static int spi_parse(spi_priv *p, const char *params, char *err, size_t errlen)
{
    char buf[256];
    int r = ec_param_check_keys(params, spi_keys, err, errlen);
    if (r != EC_OK) {
        return r;
    }

    r = ec_param_get(params, "dev", p->dev, sizeof p->dev);
    if (r != 1 || p->dev[0] == '\0') {
        ec_set_err(err, errlen, r == 0 || r == 1 ? "missing dev= (e.g. dev=/dev/spidev0.0)"
                                                 : "dev= is too long");
        return EC_EINVAL;
    }

    r = ec_param_get(params, "chip", buf, sizeof buf);
    if (r != 1) {
        ec_set_err(err, errlen, "missing chip= (max31855 or max31856)");
        return EC_EINVAL;
    }
    if (strcmp(buf, "max31855") == 0) {
        p->chip = CHIP_MAX31855;
    } else if (strcmp(buf, "max31856") == 0) {
        p->chip = CHIP_MAX31856;
    } else {
        ec_set_err(err, errlen, "unknown chip '%s' (expected max31855 or max31856)", buf);
        return EC_EINVAL;
    }
    int is55 = (p->chip == CHIP_MAX31855);

    p->tc = 'K';
    r = ec_param_get(params, "tc", buf, sizeof buf);
    if (r != 0) {
        if (r != 1 || strlen(buf) != 1 || ec_max31856_tc_code(buf[0]) < 0) {
            ec_set_err(err, errlen, "bad tc '%s' (expected one of B, E, J, K, N, R, S, T)",
                       r == 1 ? buf : "(too long)");
            return EC_EINVAL;
        }
        p->tc = (char)((buf[0] >= 'a' && buf[0] <= 'z') ? buf[0] - 'a' + 'A' : buf[0]);
    }
    if (is55 && p->tc == 'B') {
        ec_set_err(err, errlen, "tc=B: there is no type-B MAX31855 (use a MAX31856)");
        return EC_EINVAL;
    }

    long v = 100;
    r = param_long(params, "poll_ms", is55 ? 100 : 10, 60000, &v, err, errlen);
    if (r < 0) {
        if (is55) {
            ec_set_err(err, errlen, "poll_ms must be 100..60000 for the max31855: pulling CS low "
                                    "aborts its conversion, which takes up to 100 ms");
        }
        return r;
    }
    p->poll_ns = v * 1000000LL;

    v = 1000000;
    if ((r = param_long(params, "speed_hz", 1, SPI_MAX_HZ, &v, err, errlen)) < 0) {
        return r;
    }
    p->speed_hz = (uint32_t)v;

    v = is55 ? 0 : 1;
    if ((r = param_long(params, "mode", 0, 3, &v, err, errlen)) < 0) {
        return r;
    }
    p->mode = (uint8_t)v;

    static const char *const only56[] = {"avg", "mains", "oc", "settle_ms", NULL};
    if (is55) {
        for (int i = 0; only56[i] != NULL; i++) {
            if (ec_param_get(params, only56[i], buf, sizeof buf) != 0) {
                ec_set_err(err, errlen, "%s= applies to the max31856 only", only56[i]);
                return EC_EINVAL;
            }
        }
        return EC_OK;
    }

    long avg = 1, mains = 60, oc = 1;
    if ((r = param_long(params, "avg", 1, 16, &avg, err, errlen)) < 0) {
        return r;
    }
    if ((r = param_long(params, "mains", 50, 60, &mains, err, errlen)) < 0) {
        return r;
    }
    if ((r = param_long(params, "oc", 1, 3, &oc, err, errlen)) < 0) {
        return r;
    }
    if (mains != 50 && mains != 60) {
        ec_set_err(err, errlen, "mains=%ld is not valid: expected 50 or 60", mains);
        return EC_EINVAL;
    }
    if (ec_max31856_cr1(p->tc, (int)avg, &p->cr1) != EC_OK) {
        ec_set_err(err, errlen, "avg=%ld is not valid: expected 1, 2, 4, 8 or 16", avg);
        return EC_EINVAL;
    }
    if (ec_max31856_cr0((int)mains, (int)oc, &p->cr0) != EC_OK) {
        ec_set_err(err, errlen, "bad mains/oc");
        return EC_EINVAL;
    }
    p->mask = MAX31856_MASK_VALUE;
    v = 250 + 40 * (avg - 1);
    if ((r = param_long(params, "settle_ms", 0, 10000, &v, err, errlen)) < 0) {
        return r;
    }
    p->settle_ns = v * 1000000LL;
    return EC_OK;
}

static int spi_open(ec_driver *d, const char *params, char *err, size_t errlen)
{
    d->priv = NULL;
    d->n_ai = d->n_di = d->n_do = 0;
    if (params == NULL) {
        params = "";
    }
    spi_priv *p = calloc(1, sizeof *p);
    if (p == NULL) {
        ec_set_err(err, errlen, "out of memory");
        return EC_ENOMEM;
    }
    p->fd = -1;
    int rc = spi_parse(p, params, err, errlen);
    if (rc != EC_OK) {
        spi_free(p);
        return rc;
    }
    const char *name = p->chip == CHIP_MAX31855 ? "MAX31855" : "MAX31856";

    p->fd = ec_sys.open(p->dev, O_RDWR | O_CLOEXEC);
    if (p->fd < 0) {
        int e = errno;
        ec_set_err(err, errlen, "cannot open %s: %s%s", p->dev, strerror(e),
                   e == ENOENT ? " (is spidev enabled for this bus and chip select?)" : "");
        spi_free(p);
        return EC_EIO;
    }
    uint8_t mode = p->mode;
    uint8_t bits = 8;
    uint32_t speed = p->speed_hz;
    const char *what = NULL;
    if (ec_sys.ioctl(p->fd, SPI_IOC_WR_MODE, &mode) < 0) {
        what = "SPI_IOC_WR_MODE";
    } else if (ec_sys.ioctl(p->fd, SPI_IOC_WR_BITS_PER_WORD, &bits) < 0) {
        what = "SPI_IOC_WR_BITS_PER_WORD";
    } else if (ec_sys.ioctl(p->fd, SPI_IOC_WR_MAX_SPEED_HZ, &speed) < 0) {
        what = "SPI_IOC_WR_MAX_SPEED_HZ";
    }
    if (what != NULL) {
        int e = errno;
        ec_set_err(err, errlen, "%s on %s failed: %s", what, p->dev, strerror(e));
        spi_free(p);
        return EC_EIO;
    }

    int e = 0;
    if (p->chip == CHIP_MAX31855) {
        uint32_t frame = 0;
        double tc, cj;
        uint32_t s0, s1;
        if (max31855_read(p, &frame, &e) != EC_OK) {
            ec_set_err(err, errlen, "SPI_IOC_MESSAGE on %s failed: %s", p->dev, strerror(e));
            spi_free(p);
            return EC_EIO;
        }
        if (ec_max31855_decode(frame, &tc, &cj, &s0, &s1) != EC_OK) {
            ec_set_err(err, errlen, "no %s answering on %s: read 0x%08X (%s)", name, p->dev,
                       (unsigned)frame,
                       frame == 0 ? "all zero: MISO stuck low or no chip?"
                                  : "reserved bits set: MISO floating high or wrong SPI mode?");
            spi_free(p);
            return EC_EIO;
        }
        p->in_settle_after_open = 0;
    } else {
        uint8_t regs[EC_MAX31856_NREGS];
        if (max31856_configure(p, &e) != EC_OK || max31856_read_all(p, regs, &e) != EC_OK) {
            ec_set_err(err, errlen, "SPI_IOC_MESSAGE on %s failed: %s", p->dev, strerror(e));
            spi_free(p);
            return EC_EIO;
        }
        if (!max31856_config_ok(p, regs)) {
            ec_set_err(err, errlen,
                       "no %s answering on %s: wrote CR0=0x%02X CR1=0x%02X, read back CR0=0x%02X "
                       "CR1=0x%02X (check wiring, chip select, SPI mode)",
                       name, p->dev, p->cr0, p->cr1, regs[EC_MAX31856_REG_CR0],
                       regs[EC_MAX31856_REG_CR1]);
            spi_free(p);
            return EC_EIO;
        }
        p->settle_until_ns = ec_monotonic_ns() + p->settle_ns;
        p->in_settle_after_open = 1;
    }

    for (int i = 0; i < 2; i++) {
        p->val[i] = 0.0;
        p->st[i] = EC_ST_NODATA;
        p->t_ns[i] = 0;
        d->ai[i] = 0.0;
        d->ai_status[i] = EC_ST_NODATA;
        d->ai_t_ns[i] = 0;
    }
    p->last_rc = EC_OK;
    d->n_ai = 2;
    d->priv = p;
    return EC_OK;
}

static void spi_deliver(ec_driver *d, const spi_priv *p)
{
    for (int i = 0; i < 2; i++) {
        d->ai[i] = p->val[i];
        d->ai_status[i] = p->st[i];
        d->ai_t_ns[i] = p->t_ns[i];
    }
}

static void spi_set_fault(spi_priv *p, int64_t now)
{
    for (int i = 0; i < 2; i++) {
        p->st[i] = EC_ST_FAULT;
        p->t_ns[i] = now;
    }
}

static int spi_read(ec_driver *d)
{
    spi_priv *p = d->priv;
    if (p == NULL) {
        return EC_ESTATE;
    }
    int64_t now = ec_monotonic_ns();
    if (p->polled && now - p->last_poll_ns < p->poll_ns) {
        spi_deliver(d, p);
        return p->last_rc;
    }
    if (p->chip == CHIP_MAX31856 && now < p->settle_until_ns) {
        /* first conversion after (re)configuration not done yet: no SPI traffic */
        spi_deliver(d, p);
        return p->in_settle_after_open ? EC_OK : p->last_rc;
    }
    p->in_settle_after_open = 0;
    p->polled = 1;
    p->last_poll_ns = now;

    int e = 0;
    int rc;
    if (p->chip == CHIP_MAX31855) {
        uint32_t frame = 0;
        rc = max31855_read(p, &frame, &e);
        if (rc == EC_OK) {
            rc = ec_max31855_decode(frame, &p->val[0], &p->val[1], &p->st[0], &p->st[1]);
            p->t_ns[0] = p->t_ns[1] = now;
        } else {
            spi_set_fault(p, now);
        }
    } else {
        uint8_t regs[EC_MAX31856_NREGS];
        rc = max31856_read_all(p, regs, &e);
        if (rc != EC_OK) {
            spi_set_fault(p, now);
        } else if (!max31856_config_ok(p, regs)) {
            /* the chip lost its configuration (reset): values are stale or zero */
            spi_set_fault(p, now);
            rc = EC_EIO;
            if (max31856_configure(p, &e) == EC_OK) {
                p->settle_until_ns = ec_monotonic_ns() + p->settle_ns;
            }
        } else {
            rc = ec_max31856_decode(regs + EC_MAX31856_REG_CJTH, &p->val[0], &p->val[1], &p->st[0],
                                    &p->st[1]);
            p->t_ns[0] = p->t_ns[1] = now;
        }
    }
    p->last_rc = rc;
    spi_deliver(d, p);
    return rc;
}

static int spi_write(ec_driver *d, const uint8_t *levels, uint64_t mask)
{
    return mask == 0 ? EC_OK : EC_EINVAL;
}

static void spi_close(ec_driver *d)
{
    if (d == NULL) {
        return;
    }
    spi_free(d->priv);
    d->priv = NULL;
}

const ec_driver_ops ec_driver_spidev = {"spidev", spi_open, spi_read, spi_write, NULL, spi_close};
