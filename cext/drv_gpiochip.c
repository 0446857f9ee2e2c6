/*
 * drv_gpiochip.c - digital inputs and outputs on one Linux GPIO chip, through the GPIO
 * character device, uAPI v2 (<linux/gpio.h>, kernel >= 5.10).
 *
 * Params ("key=value;..."; unknown or repeated keys are refused, so a typo such as
 * "input=5" cannot silently leave a line unrequested):
 *   chip=/dev/gpiochip0     required; a bare name ("gpiochip0") means /dev/<name>
 *   inputs=5,6,13           line offsets on the chip read as digital inputs
 *   outputs=17,27           line offsets driven as digital outputs
 *                           (at least one line in all; at most 64 = GPIO_V2_LINES_MAX
 *                           together; no line twice, none both input and output)
 *   consumer=reedge         label the kernel shows for the lines (1..31 chars, default reedge)
 *   bias=as-is              inputs' bias: pull-up, pull-down, disabled or as-is (default:
 *                           leave what the board/device tree set)
 *   active_low_inputs=6     inputs whose active level is physical low (the kernel inverts)
 *   active_low_outputs=27   outputs whose active level is physical low (e.g. relay boards
 *                           that energise on a low pin)
 *   drive=push-pull         outputs' drive: push-pull (default), open-drain or open-source
 *   initial_high=27         outputs requested at logical 1 instead of 0
 *
 * Driver input i = the i-th line of inputs= (n_di = count), driver output i = the i-th
 * line of outputs= (n_do = count). All levels are logical: 1 = active, the kernel
 * applying active_low. Each value is the level the line has, 0 or 1.
 *
 * One line request holds every line (one fd, all or nothing): inputs first, outputs
 * after, in the order listed; line config attributes give each group its direction and
 * flags. Outputs are requested at logical 0 (or 1 for initial_high=), i.e. they come up
 * at that level as soon as open() returns, before the core's first tick writes the
 * outputs' safe levels: list in initial_high= every output whose safe level is 1 so it
 * never glitches through 0. open() checks the offsets against the chip's line count
 * (GPIO_GET_CHIPINFO_IOCTL) and, when the request is refused as busy, names the line and
 * its current consumer (GPIO_V2_GET_LINEINFO_IOCTL).
 *
 * read(): one GPIO_V2_LINE_GET_VALUES_IOCTL for all inputs -> di[], di_status EC_ST_OK;
 * on failure EC_EIO and EC_ST_FAULT on every input (di[] keeps the last levels).
 * Before the first read the inputs are EC_ST_NODATA. No inputs: nothing to do.
 * write(levels, mask): one GPIO_V2_LINE_SET_VALUES_IOCTL for the outputs whose bit is
 * set in mask (levels[i] != 0 -> 1); an empty mask does nothing; a bit at or beyond
 * n_do is EC_EINVAL; ioctl failure EC_EIO.
 * close(): closes the line request fd and the chip fd. It does not change the levels:
 * what a released line does (most controllers keep driving the last level) depends on
 * the GPIO controller, so the core must write safe levels before closing.
 * clock_ns: NULL (CLOCK_MONOTONIC).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/gpio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "edge_core.h"
#include "sys_seam.h"

#define LIST_BUF 1024

typedef struct gpio_priv {
    int chip_fd;
    int req_fd;
    uint32_t n_in;
    uint32_t n_out;
    uint32_t offsets[GPIO_V2_LINES_MAX]; /* request order: inputs, then outputs */
    char path[256];
} gpio_priv;

static const char *const gpio_keys[] = {"chip", "inputs", "outputs", "consumer", "bias",
                                        "active_low_inputs", "active_low_outputs", "drive",
                                        "initial_high", NULL};


/* a comma-separated list of line offsets; absent or empty = no lines */
static int parse_lines(const char *params, const char *key, uint32_t *out, uint32_t *n,
                       char *err, size_t errlen)
{
    char buf[LIST_BUF];
    *n = 0;
    int r = ec_param_get(params, key, buf, sizeof buf);
    if (r == 0 || (r == 1 && buf[0] == '\0')) {
        return EC_OK;
    }
    if (r != 1) {
        ec_set_err(err, errlen, "too many lines in %s= (at most %d, GPIO_V2_LINES_MAX)", key,
                   GPIO_V2_LINES_MAX);
        return EC_EINVAL;
    }
    int count = 1;
    for (const char *c = buf; *c != '\0'; c++) {
        count += (*c == ',');
    }
    if (count > GPIO_V2_LINES_MAX) {
        ec_set_err(err, errlen, "too many lines in %s=: %d (at most %d, GPIO_V2_LINES_MAX)", key,
                   count, GPIO_V2_LINES_MAX);
        return EC_EINVAL;
    }
    int32_t v[GPIO_V2_LINES_MAX];
    int got = ec_param_int_list(buf, v, GPIO_V2_LINES_MAX);
    if (got < 0) {
        ec_set_err(err, errlen, "bad line list %s=%s: expected line offsets like 5,6,13", key, buf);
        return EC_EINVAL;
    }
    for (int i = 0; i < got; i++) {
        for (int j = 0; j < i; j++) {
            if (v[j] == v[i]) {
                ec_set_err(err, errlen, "line %d is listed twice in %s=", (int)v[i], key);
                return EC_EINVAL;
            }
        }
        out[i] = (uint32_t)v[i];
    }
    *n = (uint32_t)got;
    return EC_OK;
}

/* bits (in request index space base..base+n-1) of the lines of `key` found in lines[] */
static int subset_mask(const char *params, const char *key, const uint32_t *lines, uint32_t n,
                       uint32_t base, const char *what, uint64_t *mask, char *err, size_t errlen)
{
    uint32_t sub[GPIO_V2_LINES_MAX];
    uint32_t ns = 0;
    int rc = parse_lines(params, key, sub, &ns, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    *mask = 0;
    for (uint32_t i = 0; i < ns; i++) {
        uint32_t j = 0;
        while (j < n && lines[j] != sub[i]) {
            j++;
        }
        if (j == n) {
            ec_set_err(err, errlen, "%s=: line %u is not one of the %s", key, (unsigned)sub[i], what);
            return EC_EINVAL;
        }
        *mask |= 1ULL << (base + j);
    }
    return EC_OK;
}

static uint64_t low_bits(uint32_t n)
{
    return n >= 64 ? ~0ULL : ((1ULL << n) - 1ULL);
}

static void gpio_free(gpio_priv *p)
{
    if (p == NULL) {
        return;
    }
    if (p->req_fd >= 0) {
        ec_sys.close(p->req_fd);
    }
    if (p->chip_fd >= 0) {
        ec_sys.close(p->chip_fd);
    }
    free(p);
}

/* after EBUSY: which line is held, and by whom */
static void explain_busy(gpio_priv *p, char *err, size_t errlen)
{
    uint32_t n = p->n_in + p->n_out;
    for (uint32_t i = 0; i < n; i++) {
        struct gpio_v2_line_info info;
        memset(&info, 0, sizeof info);
        info.offset = p->offsets[i];
        if (ec_sys.ioctl(p->chip_fd, GPIO_V2_GET_LINEINFO_IOCTL, &info) == 0 &&
            (info.flags & GPIO_V2_LINE_FLAG_USED)) {
            info.consumer[GPIO_MAX_NAME_SIZE - 1] = '\0';
            ec_set_err(err, errlen, "line %u on %s is already in use by '%s'", (unsigned)p->offsets[i],
                       p->path, info.consumer[0] ? info.consumer : "?");
            return;
        }
    }
    ec_set_err(err, errlen, "GPIO_V2_GET_LINE_IOCTL on %s failed: %s (a line is in use)", p->path,
               strerror(EBUSY));
}

static int gpio_parse(gpio_priv *p, const char *params, struct gpio_v2_line_request *req,
                      char *err, size_t errlen)
{
    int rc = ec_param_check_keys(params, gpio_keys, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    char buf[240];
    int r = ec_param_get(params, "chip", buf, sizeof buf);
    if (r != 1 || buf[0] == '\0') {
        ec_set_err(err, errlen, r < 0 ? "chip= is too long" : "missing chip= (e.g. chip=/dev/gpiochip0)");
        return EC_EINVAL;
    }
    snprintf(p->path, sizeof p->path, "%s%s", strchr(buf, '/') == NULL ? "/dev/" : "", buf);

    uint32_t in[GPIO_V2_LINES_MAX], out[GPIO_V2_LINES_MAX];
    if ((rc = parse_lines(params, "inputs", in, &p->n_in, err, errlen)) != EC_OK ||
        (rc = parse_lines(params, "outputs", out, &p->n_out, err, errlen)) != EC_OK) {
        return rc;
    }
    if (p->n_in + p->n_out == 0) {
        ec_set_err(err, errlen, "no lines: give inputs= and/or outputs=");
        return EC_EINVAL;
    }
    if (p->n_in + p->n_out > GPIO_V2_LINES_MAX) {
        ec_set_err(err, errlen, "too many lines: %u inputs + %u outputs > %d (GPIO_V2_LINES_MAX)",
                   (unsigned)p->n_in, (unsigned)p->n_out, GPIO_V2_LINES_MAX);
        return EC_EINVAL;
    }
    for (uint32_t i = 0; i < p->n_in; i++) {
        for (uint32_t j = 0; j < p->n_out; j++) {
            if (in[i] == out[j]) {
                ec_set_err(err, errlen, "line %u is both an input and an output", (unsigned)in[i]);
                return EC_EINVAL;
            }
        }
    }
    memcpy(p->offsets, in, p->n_in * sizeof in[0]);
    memcpy(p->offsets + p->n_in, out, p->n_out * sizeof out[0]);

    char consumer[GPIO_MAX_NAME_SIZE] = "reedge";
    r = ec_param_get(params, "consumer", consumer, sizeof consumer);
    if (r < 0 || consumer[0] == '\0') {
        ec_set_err(err, errlen, "consumer= must be 1..%d characters", GPIO_MAX_NAME_SIZE - 1);
        return EC_EINVAL;
    }

    int bad = 0;
    uint64_t bias = 0;
    r = ec_param_get(params, "bias", buf, sizeof buf);
    if (r == 1) {
        if (strcmp(buf, "pull-up") == 0) {
            bias = GPIO_V2_LINE_FLAG_BIAS_PULL_UP;
        } else if (strcmp(buf, "pull-down") == 0) {
            bias = GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN;
        } else if (strcmp(buf, "disabled") == 0) {
            bias = GPIO_V2_LINE_FLAG_BIAS_DISABLED;
        } else if (strcmp(buf, "as-is") != 0) {
            bad = 1;
        }
    }
    if (r < 0 || bad) {
        ec_set_err(err, errlen, "bad bias '%s' (expected pull-up, pull-down, disabled or as-is)",
                   bad ? buf : "(too long)");
        return EC_EINVAL;
    }

    uint64_t drive = 0;
    r = ec_param_get(params, "drive", buf, sizeof buf);
    if (r == 1) {
        if (strcmp(buf, "open-drain") == 0) {
            drive = GPIO_V2_LINE_FLAG_OPEN_DRAIN;
        } else if (strcmp(buf, "open-source") == 0) {
            drive = GPIO_V2_LINE_FLAG_OPEN_SOURCE;
        } else if (strcmp(buf, "push-pull") != 0) {
            bad = 1;
        }
    }
    if (r < 0 || bad) {
        ec_set_err(err, errlen, "bad drive '%s' (expected push-pull, open-drain or open-source)",
                   bad ? buf : "(too long)");
        return EC_EINVAL;
    }

    uint64_t al_in = 0, al_out = 0, init_high = 0;
    if ((rc = subset_mask(params, "active_low_inputs", in, p->n_in, 0, "inputs", &al_in, err,
                          errlen)) != EC_OK ||
        (rc = subset_mask(params, "active_low_outputs", out, p->n_out, p->n_in, "outputs", &al_out,
                          err, errlen)) != EC_OK ||
        (rc = subset_mask(params, "initial_high", out, p->n_out, p->n_in, "outputs", &init_high,
                          err, errlen)) != EC_OK) {
        return rc;
    }

    /* the request: one attribute per group of lines sharing flags, plus output values */
    uint32_t n = p->n_in + p->n_out;
    uint64_t in_mask = low_bits(p->n_in);
    uint64_t out_mask = low_bits(n) & ~in_mask;
    memset(req, 0, sizeof *req);
    memcpy(req->offsets, p->offsets, n * sizeof p->offsets[0]);
    memcpy(req->consumer, consumer, sizeof consumer);
    req->num_lines = n;
    struct {
        uint64_t flags;
        uint64_t mask;
    } groups[4] = {
        {GPIO_V2_LINE_FLAG_INPUT | bias, in_mask & ~al_in},
        {GPIO_V2_LINE_FLAG_INPUT | bias | GPIO_V2_LINE_FLAG_ACTIVE_LOW, al_in},
        {GPIO_V2_LINE_FLAG_OUTPUT | drive, out_mask & ~al_out},
        {GPIO_V2_LINE_FLAG_OUTPUT | drive | GPIO_V2_LINE_FLAG_ACTIVE_LOW, al_out},
    };
    uint32_t na = 0;
    for (int g = 0; g < 4; g++) {
        if (groups[g].mask != 0) {
            req->config.attrs[na].attr.id = GPIO_V2_LINE_ATTR_ID_FLAGS;
            req->config.attrs[na].attr.flags = groups[g].flags;
            req->config.attrs[na].mask = groups[g].mask;
            na++;
        }
    }
    if (out_mask != 0) {
        req->config.attrs[na].attr.id = GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES;
        req->config.attrs[na].attr.values = init_high;
        req->config.attrs[na].mask = out_mask;
        na++;
    }
    req->config.num_attrs = na;
    return EC_OK;
}

static int gpio_open(ec_driver *d, const char *params, char *err, size_t errlen)
{
    d->priv = NULL;
    d->n_ai = d->n_di = d->n_do = 0;
    if (params == NULL) {
        params = "";
    }
    gpio_priv *p = calloc(1, sizeof *p);
    if (p == NULL) {
        ec_set_err(err, errlen, "out of memory");
        return EC_ENOMEM;
    }
    p->chip_fd = -1;
    p->req_fd = -1;
    struct gpio_v2_line_request req;
    int rc = gpio_parse(p, params, &req, err, errlen);
    if (rc != EC_OK) {
        gpio_free(p);
        return rc;
    }

    p->chip_fd = ec_sys.open(p->path, O_RDWR | O_CLOEXEC);
    if (p->chip_fd < 0) {
        int e = errno;
        ec_set_err(err, errlen, "cannot open %s: %s%s", p->path, strerror(e),
                   e == EACCES ? " (is this user allowed to use the GPIO chip?)" : "");
        gpio_free(p);
        return EC_EIO;
    }

    struct gpiochip_info info;
    memset(&info, 0, sizeof info);
    if (ec_sys.ioctl(p->chip_fd, GPIO_GET_CHIPINFO_IOCTL, &info) < 0) {
        int e = errno;
        ec_set_err(err, errlen, "GPIO_GET_CHIPINFO_IOCTL on %s failed: %s (is it a GPIO chip?)",
                   p->path, strerror(e));
        gpio_free(p);
        return EC_EIO;
    }
    info.label[GPIO_MAX_NAME_SIZE - 1] = '\0';
    for (uint32_t i = 0; i < req.num_lines; i++) {
        if (req.offsets[i] >= info.lines) {
            ec_set_err(err, errlen, "line %u is not on %s: '%s' has %u lines (0..%u)",
                       (unsigned)req.offsets[i], p->path, info.label, (unsigned)info.lines,
                       info.lines ? (unsigned)info.lines - 1 : 0u);
            gpio_free(p);
            return EC_EINVAL;
        }
    }

    if (ec_sys.ioctl(p->chip_fd, GPIO_V2_GET_LINE_IOCTL, &req) < 0) {
        int e = errno;
        if (e == EBUSY) {
            explain_busy(p, err, errlen);
        } else {
            ec_set_err(err, errlen, "GPIO_V2_GET_LINE_IOCTL on %s failed: %s", p->path, strerror(e));
        }
        gpio_free(p);
        return EC_EIO;
    }
    if (req.fd <= 0) {
        ec_set_err(err, errlen, "GPIO_V2_GET_LINE_IOCTL on %s returned no line fd", p->path);
        gpio_free(p);
        return EC_EIO;
    }
    p->req_fd = req.fd;

    d->n_di = p->n_in;
    d->n_do = p->n_out;
    for (uint32_t i = 0; i < p->n_in; i++) {
        d->di[i] = 0;
        d->di_status[i] = EC_ST_NODATA;
    }
    d->priv = p;
    return EC_OK;
}

static int gpio_read(ec_driver *d)
{
    gpio_priv *p = d->priv;
    if (p == NULL) {
        return EC_ESTATE;
    }
    if (p->n_in == 0) {
        return EC_OK;
    }
    struct gpio_v2_line_values lv;
    memset(&lv, 0, sizeof lv);
    lv.mask = low_bits(p->n_in);
    if (ec_sys.ioctl(p->req_fd, GPIO_V2_LINE_GET_VALUES_IOCTL, &lv) < 0) {
        for (uint32_t i = 0; i < p->n_in; i++) {
            d->di_status[i] = EC_ST_FAULT;
        }
        return EC_EIO;
    }
    for (uint32_t i = 0; i < p->n_in; i++) {
        d->di[i] = (uint8_t)((lv.bits >> i) & 1u);
        d->di_status[i] = EC_ST_OK;
    }
    return EC_OK;
}

static int gpio_write(ec_driver *d, const uint8_t *levels, uint64_t mask)
{
    gpio_priv *p = d->priv;
    if (p == NULL) {
        return EC_ESTATE;
    }
    if (mask == 0) {
        return EC_OK;
    }
    if ((mask & ~low_bits(p->n_out)) != 0 || levels == NULL) {
        return EC_EINVAL;
    }
    struct gpio_v2_line_values lv;
    memset(&lv, 0, sizeof lv);
    for (uint32_t i = 0; i < p->n_out; i++) {
        if (mask & (1ULL << i)) {
            lv.mask |= 1ULL << (p->n_in + i);
            if (levels[i]) {
                lv.bits |= 1ULL << (p->n_in + i);
            }
        }
    }
    if (ec_sys.ioctl(p->req_fd, GPIO_V2_LINE_SET_VALUES_IOCTL, &lv) < 0) {
        return EC_EIO;
    }
    return EC_OK;
}

static void gpio_close(ec_driver *d)
{
    if (d == NULL) {
        return;
    }
    gpio_free(d->priv);
    d->priv = NULL;
}

const ec_driver_ops ec_driver_gpiochip = {"gpiochip", gpio_open, gpio_read, gpio_write, NULL, gpio_close};
