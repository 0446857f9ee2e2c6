/* test_gpiochip.c - the gpiochip driver against the fake kernel (fake_kernel.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "ctest.h"
#include "driver.h"
#include "edge_core.h"
#include "fake_kernel.h"
#include "sys_seam.h"

#define ERRLEN 256
#define CHIP "chip=/dev/gpiochip0;"
#define F_IN GPIO_V2_LINE_FLAG_INPUT
#define F_OUT GPIO_V2_LINE_FLAG_OUTPUT
#define F_AL GPIO_V2_LINE_FLAG_ACTIVE_LOW

static char err[ERRLEN];

static int drv_open(ec_driver *d, const char *params)
{
    memset(d, 0, sizeof *d);
    d->ops = &ec_driver_gpiochip;
    memset(err, 0, sizeof err);
    return ec_driver_gpiochip.open(d, params, err, sizeof err);
}

static int err_has(const char *what)
{
    if (strstr(err, what) != NULL) {
        return 1;
    }
    fprintf(stderr, "  err was: \"%s\", expected it to contain \"%s\"\n", err, what);
    return 0;
}

/* index of `offset` in the last line request, -1 if absent */
static int req_index(uint32_t offset)
{
    for (uint32_t i = 0; i < fk_state.last_request.num_lines; i++) {
        if (fk_state.last_request.offsets[i] == offset) {
            return (int)i;
        }
    }
    return -1;
}

TEST(test_request_contents)
{
    fk_install();
    ec_driver d;
    int rc = drv_open(&d, CHIP "inputs=5,6,13;outputs=17,27;consumer=reedge;bias=pull-up;"
                              "active_low_inputs=6");
    CHECK(rc == EC_OK);
    CHECK(d.n_di == 3 && d.n_do == 2 && d.n_ai == 0);
    CHECK(fk_state.n_opens == 1);
    CHECK(strcmp(fk_state.last_open_path, "/dev/gpiochip0") == 0);
    CHECK((fk_state.last_open_flags & O_ACCMODE) == O_RDWR);
    CHECK((fk_state.last_open_flags & O_CLOEXEC) != 0);
    /* one request holding every line, inputs first, in the order listed */
    CHECK(fk_state.n_line_requests == 1);
    const struct gpio_v2_line_request *r = &fk_state.last_request;
    CHECK(r->num_lines == 5);
    static const uint32_t want[5] = {5, 6, 13, 17, 27};
    for (int i = 0; i < 5; i++) {
        CHECK(r->offsets[i] == want[i]);
    }
    CHECK(strcmp(r->consumer, "reedge") == 0);
    CHECK(r->config.num_attrs <= GPIO_V2_LINE_NUM_ATTRS_MAX);
    /* the flags each line actually got */
    CHECK(fk_state.line[5].flags == (F_IN | GPIO_V2_LINE_FLAG_BIAS_PULL_UP));
    CHECK(fk_state.line[6].flags == (F_IN | GPIO_V2_LINE_FLAG_BIAS_PULL_UP | F_AL));
    CHECK(fk_state.line[13].flags == (F_IN | GPIO_V2_LINE_FLAG_BIAS_PULL_UP));
    CHECK(fk_state.line[17].flags == F_OUT);
    CHECK(fk_state.line[27].flags == F_OUT);
    for (uint32_t off = 0; off < 32; off++) {
        int used = off == 5 || off == 6 || off == 13 || off == 17 || off == 27;
        CHECK(fk_state.line[off].requested == used);
    }
    /* outputs come up at 0 */
    CHECK(fk_gpio_output(17) == 0 && fk_gpio_output(27) == 0);
    /* two fds: the chip and the line request */
    CHECK(fk_open_fd_count() == 2);
    CHECK(fk_fd_kind(r->fd) == FK_FD_LINEREQ);
    /* no input has a value before the first read */
    for (uint32_t i = 0; i < d.n_di; i++) {
        CHECK(d.di_status[i] == EC_ST_NODATA);
    }
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_default_consumer_and_bias)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "inputs=3;outputs=4") == EC_OK);
    CHECK(strcmp(fk_state.last_request.consumer, "reedge") == 0);
    CHECK(fk_state.line[3].flags == F_IN); /* bias as-is: no bias flag */
    CHECK(fk_state.line[4].flags == F_OUT);
    d.ops->close(&d);

    static const struct {
        const char *bias;
        uint64_t flag;
    } cases[] = {
        {"pull-up", GPIO_V2_LINE_FLAG_BIAS_PULL_UP},
        {"pull-down", GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN},
        {"disabled", GPIO_V2_LINE_FLAG_BIAS_DISABLED},
        {"as-is", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char params[128];
        snprintf(params, sizeof params, CHIP "inputs=3;outputs=4;bias=%s", cases[i].bias);
        CHECK(drv_open(&d, params) == EC_OK);
        CHECK(fk_state.line[3].flags == (F_IN | cases[i].flag));
        CHECK(fk_state.line[4].flags == F_OUT); /* bias is for inputs only */
        d.ops->close(&d);
    }
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_read_levels)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "inputs=5,6,13;outputs=17;active_low_inputs=6") == EC_OK);
    fk_gpio_set_input(5, 1);
    fk_gpio_set_input(6, 0); /* active low: physical 0 = logical 1 */
    fk_gpio_set_input(13, 0);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.di[0] == 1 && d.di[1] == 1 && d.di[2] == 0);
    for (int i = 0; i < 3; i++) {
        CHECK(d.di_status[i] == EC_ST_OK);
    }
    CHECK(fk_state.n_get_values == 1);

    fk_gpio_set_input(5, 0);
    fk_gpio_set_input(6, 1);
    fk_gpio_set_input(13, 1);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.di[0] == 0 && d.di[1] == 0 && d.di[2] == 1);
    CHECK(fk_state.n_get_values == 2);
    /* the other lines' levels do not leak in */
    fk_gpio_set_input(7, 1);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.di[0] == 0 && d.di[1] == 0 && d.di[2] == 1);
    d.ops->close(&d);
    fk_uninstall();
}

TEST(test_write_levels_and_masks)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "inputs=5,6;outputs=17,27,22") == EC_OK);
    uint8_t lv[3] = {1, 0, 1};

    /* only output 0 (line 17) */
    CHECK(d.ops->write(&d, lv, 0x1) == EC_OK);
    CHECK(fk_gpio_output(17) == 1 && fk_gpio_output(27) == 0 && fk_gpio_output(22) == 0);
    CHECK(fk_state.last_set_mask == (1ULL << req_index(17)));
    CHECK(fk_state.last_set_bits == (1ULL << req_index(17)));
    CHECK(req_index(17) == 2); /* after the two inputs */

    /* output 2 (line 22) only; 17 keeps its level */
    CHECK(d.ops->write(&d, lv, 0x4) == EC_OK);
    CHECK(fk_gpio_output(17) == 1 && fk_gpio_output(27) == 0 && fk_gpio_output(22) == 1);
    CHECK(fk_state.last_set_mask == (1ULL << 4));

    /* everything to the opposite levels in one call */
    uint8_t lv2[3] = {0, 1, 0};
    CHECK(d.ops->write(&d, lv2, 0x7) == EC_OK);
    CHECK(fk_gpio_output(17) == 0 && fk_gpio_output(27) == 1 && fk_gpio_output(22) == 0);
    CHECK(fk_state.last_set_mask == 0x1C && fk_state.last_set_bits == 0x08);
    CHECK(fk_state.n_set_values == 3);

    /* any non-zero level is 1 */
    uint8_t lv3[3] = {7, 0, 0};
    CHECK(d.ops->write(&d, lv3, 0x1) == EC_OK);
    CHECK(fk_gpio_output(17) == 1);

    /* empty mask: nothing sent */
    CHECK(d.ops->write(&d, lv, 0) == EC_OK);
    CHECK(fk_state.n_set_values == 4);
    /* a bit beyond n_do: refused, nothing sent */
    CHECK(d.ops->write(&d, lv, 0x8) == EC_EINVAL);
    CHECK(d.ops->write(&d, lv, 1ULL << 63) == EC_EINVAL);
    CHECK(d.ops->write(&d, NULL, 0x1) == EC_EINVAL);
    CHECK(fk_state.n_set_values == 4);
    /* the inputs were never driven */
    CHECK(fk_state.line[5].flags == F_IN && fk_state.line[6].flags == F_IN);
    d.ops->close(&d);
    fk_uninstall();
}

TEST(test_output_options)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "outputs=17,27,22;active_low_outputs=27,22;initial_high=22;"
                            "drive=open-drain") == EC_OK);
    CHECK(d.n_di == 0 && d.n_do == 3);
    uint64_t od = GPIO_V2_LINE_FLAG_OPEN_DRAIN;
    CHECK(fk_state.line[17].flags == (F_OUT | od));
    CHECK(fk_state.line[27].flags == (F_OUT | od | F_AL));
    CHECK(fk_state.line[22].flags == (F_OUT | od | F_AL));
    /* logical initial levels 0, 0, 1 -> physical 0, 1 (active low), 0 (active low, high) */
    CHECK(fk_gpio_output(17) == 0);
    CHECK(fk_gpio_output(27) == 1);
    CHECK(fk_gpio_output(22) == 0);
    /* logical 1 on the active-low output 27 drives it low */
    uint8_t lv[3] = {1, 1, 0};
    CHECK(d.ops->write(&d, lv, 0x7) == EC_OK);
    CHECK(fk_gpio_output(17) == 1 && fk_gpio_output(27) == 0 && fk_gpio_output(22) == 1);
    d.ops->close(&d);

    CHECK(drv_open(&d, CHIP "outputs=4;drive=open-source") == EC_OK);
    CHECK(fk_state.line[4].flags == (F_OUT | GPIO_V2_LINE_FLAG_OPEN_SOURCE));
    d.ops->close(&d);
    CHECK(drv_open(&d, CHIP "outputs=4;drive=push-pull") == EC_OK);
    CHECK(fk_state.line[4].flags == F_OUT);
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_inputs_only_and_outputs_only)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "inputs=1,2") == EC_OK);
    CHECK(d.n_di == 2 && d.n_do == 0);
    CHECK(fk_state.last_request.config.num_attrs == 1); /* no output values attribute */
    uint8_t lv[1] = {1};
    CHECK(d.ops->write(&d, lv, 0) == EC_OK);
    CHECK(d.ops->write(&d, lv, 1) == EC_EINVAL);
    CHECK(fk_state.n_set_values == 0);
    CHECK(d.ops->read(&d) == EC_OK);
    d.ops->close(&d);

    CHECK(drv_open(&d, CHIP "outputs=3") == EC_OK);
    CHECK(d.n_di == 0 && d.n_do == 1);
    int gets = fk_state.n_get_values;
    CHECK(d.ops->read(&d) == EC_OK); /* nothing to read: no ioctl */
    CHECK(fk_state.n_get_values == gets);
    CHECK(d.ops->write(&d, lv, 1) == EC_OK);
    CHECK(fk_gpio_output(3) == 1);
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_max_lines)
{
    fk_install();
    fk_state.gpio_n_lines = 64;
    char params[600];
    int n = snprintf(params, sizeof params, CHIP "inputs=");
    for (int i = 0; i < 40; i++) {
        n += snprintf(params + n, sizeof params - (size_t)n, "%s%d", i ? "," : "", i);
    }
    n += snprintf(params + n, sizeof params - (size_t)n, ";outputs=");
    for (int i = 40; i < 64; i++) {
        n += snprintf(params + n, sizeof params - (size_t)n, "%s%d", i > 40 ? "," : "", i);
    }
    ec_driver d;
    CHECK(drv_open(&d, params) == EC_OK);
    CHECK(d.n_di == 40 && d.n_do == 24);
    CHECK(fk_state.last_request.num_lines == 64);
    for (int i = 0; i < 64; i += 7) {
        fk_gpio_set_input((uint32_t)i, 1);
    }
    CHECK(d.ops->read(&d) == EC_OK);
    for (int i = 0; i < 40; i++) {
        CHECK(d.di[i] == (i % 7 == 0));
    }
    uint8_t lv[24];
    for (int i = 0; i < 24; i++) {
        lv[i] = (uint8_t)(i & 1);
    }
    CHECK(d.ops->write(&d, lv, (1ULL << 24) - 1) == EC_OK);
    for (int i = 0; i < 24; i++) {
        CHECK(fk_gpio_output((uint32_t)(40 + i)) == (i & 1));
    }
    CHECK(fk_state.last_set_mask == ~((1ULL << 40) - 1));
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_param_errors)
{
    fk_install();
    char many[700];
    int n = snprintf(many, sizeof many, CHIP "inputs=");
    for (int i = 0; i < 65; i++) {
        n += snprintf(many + n, sizeof many - (size_t)n, "%s%d", i ? "," : "", i);
    }
    char split[700];
    n = snprintf(split, sizeof split, CHIP "inputs=");
    for (int i = 0; i < 40; i++) {
        n += snprintf(split + n, sizeof split - (size_t)n, "%s%d", i ? "," : "", i);
    }
    n += snprintf(split + n, sizeof split - (size_t)n, ";outputs=");
    for (int i = 40; i < 70; i++) {
        n += snprintf(split + n, sizeof split - (size_t)n, "%s%d", i > 40 ? "," : "", i);
    }
    const struct {
        const char *params;
        const char *msg;
    } cases[] = {
        {"", "missing chip="},
        {"inputs=5", "missing chip="},
        {"chip=;inputs=5", "missing chip="},
        {CHIP, "no lines"},
        {CHIP "inputs=;outputs=", "no lines"},
        {CHIP "inputs=5,x", "bad line list inputs=5,x"},
        {CHIP "inputs=5,,6", "bad line list"},
        {CHIP "inputs=-1", "bad line list"},
        {CHIP "outputs=1 ,2", "bad line list outputs="},
        {CHIP "inputs=5;outputs=17,5", "line 5 is both an input and an output"},
        {CHIP "inputs=5,6,5", "line 5 is listed twice in inputs="},
        {CHIP "outputs=7,7", "line 7 is listed twice in outputs="},
        {many, "too many lines in inputs=: 65"},
        {split, "too many lines: 40 inputs + 30 outputs > 64"},
        {CHIP "input=5", "unknown parameter 'input'"},
        {CHIP "inputs=5;inputs=6", "parameter 'inputs' given twice"},
        {CHIP "inputs", "parameter 'inputs' has no value"},
        {CHIP "inputs=5;bias=up", "bad bias 'up'"},
        {CHIP "outputs=5;drive=od", "bad drive 'od'"},
        {CHIP "inputs=5;active_low_inputs=7", "active_low_inputs=: line 7 is not one of the inputs"},
        {CHIP "inputs=5;outputs=6;active_low_outputs=5", "active_low_outputs=: line 5 is not one of the outputs"},
        {CHIP "inputs=5;outputs=6;initial_high=5", "initial_high=: line 5 is not one of the outputs"},
        {CHIP "inputs=5;active_low_inputs=x", "bad line list active_low_inputs="},
        {CHIP "inputs=5;consumer=", "consumer= must be 1..31 characters"},
        {CHIP "inputs=5;consumer=abcdefghijklmnopqrstuvwxyz0123456", "consumer= must be 1..31"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ec_driver d;
        int rc = drv_open(&d, cases[i].params);
        CHECK(rc == EC_EINVAL);
        CHECK(err_has(cases[i].msg));
        CHECK(d.priv == NULL);
        CHECK(d.n_di == 0 && d.n_do == 0);
        d.ops->close(&d); /* safe after a failed open */
    }
    CHECK(fk_state.n_opens == 0); /* refused before touching the device */
    CHECK(fk_open_fd_count() == 0);
    /* NULL params is "no params" */
    ec_driver d;
    memset(&d, 0, sizeof d);
    CHECK(ec_driver_gpiochip.open(&d, NULL, err, sizeof err) == EC_EINVAL);
    CHECK(err_has("missing chip="));
    fk_uninstall();
}

TEST(test_open_failures)
{
    fk_install();
    ec_driver d;

    /* no such chip */
    CHECK(drv_open(&d, "chip=/dev/gpiochip9;inputs=5") == EC_EIO);
    CHECK(err_has("cannot open /dev/gpiochip9: "));
    CHECK(err_has(strerror(ENOENT)));
    CHECK(d.priv == NULL && fk_open_fd_count() == 0);

    /* open refused */
    fk_fail(FK_OP_OPEN, 0, EACCES, 1);
    CHECK(drv_open(&d, CHIP "inputs=5") == EC_EIO);
    CHECK(err_has(strerror(EACCES)));
    CHECK(err_has("/dev/gpiochip0"));
    CHECK(fk_open_fd_count() == 0);

    /* not a GPIO chip */
    fk_fail(FK_OP_IOCTL, GPIO_GET_CHIPINFO_IOCTL, ENOTTY, 1);
    CHECK(drv_open(&d, CHIP "inputs=5") == EC_EIO);
    CHECK(err_has("GPIO_GET_CHIPINFO_IOCTL on /dev/gpiochip0 failed"));
    CHECK(err_has(strerror(ENOTTY)));
    CHECK(fk_open_fd_count() == 0);

    /* a line beyond the chip */
    CHECK(drv_open(&d, CHIP "inputs=5;outputs=40") == EC_EINVAL);
    CHECK(err_has("line 40 is not on /dev/gpiochip0"));
    CHECK(err_has("32 lines"));
    CHECK(fk_state.n_line_requests == 0 && fk_open_fd_count() == 0);

    /* the request ioctl fails */
    fk_fail(FK_OP_IOCTL, GPIO_V2_GET_LINE_IOCTL, EIO, 1);
    CHECK(drv_open(&d, CHIP "inputs=5") == EC_EIO);
    CHECK(err_has("GPIO_V2_GET_LINE_IOCTL on /dev/gpiochip0 failed"));
    CHECK(err_has(strerror(EIO)));
    CHECK(fk_open_fd_count() == 0);

    /* a line held by someone else: named, with its consumer */
    fk_gpio_set_foreign(17, "sysfs");
    CHECK(drv_open(&d, CHIP "inputs=5;outputs=17") == EC_EIO);
    CHECK(err_has("line 17 on /dev/gpiochip0 is already in use by 'sysfs'"));
    CHECK(fk_open_fd_count() == 0);
    CHECK(fk_state.line[5].requested == 0); /* all or nothing */
    fk_gpio_set_foreign(17, NULL);

    /* a line held by another instance of this driver */
    ec_driver a;
    CHECK(drv_open(&a, CHIP "inputs=5;consumer=furnace-a") == EC_OK);
    CHECK(drv_open(&d, CHIP "outputs=6,5") == EC_EIO);
    CHECK(err_has("line 5 on /dev/gpiochip0 is already in use by 'furnace-a'"));
    CHECK(fk_open_fd_count() == 2);
    a.ops->close(&a);
    CHECK(fk_open_fd_count() == 0);
    CHECK(drv_open(&d, CHIP "outputs=6,5") == EC_OK); /* free again after close */
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_read_failure_faults_every_input)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "inputs=5,6,13;outputs=17") == EC_OK);
    fk_gpio_set_input(5, 1);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.di[0] == 1);
    fk_fail(FK_OP_IOCTL, GPIO_V2_LINE_GET_VALUES_IOCTL, EIO, 1);
    CHECK(d.ops->read(&d) == EC_EIO);
    for (int i = 0; i < 3; i++) {
        CHECK(d.di_status[i] == EC_ST_FAULT);
    }
    /* it recovers on the next good read */
    CHECK(d.ops->read(&d) == EC_OK);
    for (int i = 0; i < 3; i++) {
        CHECK(d.di_status[i] == EC_ST_OK);
    }
    CHECK(d.di[0] == 1);
    d.ops->close(&d);
    fk_uninstall();
}

TEST(test_write_failure)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "outputs=17") == EC_OK);
    uint8_t lv[1] = {1};
    fk_fail(FK_OP_IOCTL, GPIO_V2_LINE_SET_VALUES_IOCTL, EIO, 1);
    CHECK(d.ops->write(&d, lv, 1) == EC_EIO);
    CHECK(fk_gpio_output(17) == 0);
    CHECK(d.ops->write(&d, lv, 1) == EC_OK);
    CHECK(fk_gpio_output(17) == 1);
    d.ops->close(&d);
    fk_uninstall();
}

TEST(test_close)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, CHIP "inputs=5;outputs=17") == EC_OK);
    int req_fd = fk_state.last_request.fd;
    CHECK(fk_open_fd_count() == 2);
    d.ops->close(&d);
    CHECK(d.priv == NULL);
    CHECK(fk_open_fd_count() == 0);
    CHECK(fk_state.n_closes == 2); /* the line request and the chip */
    CHECK(fk_fd_kind(req_fd) == FK_FD_FREE);
    CHECK(fk_state.line[5].requested == 0 && fk_state.line[17].requested == 0);
    /* twice, and on a driver that never opened */
    d.ops->close(&d);
    CHECK(fk_state.n_closes == 2);
    ec_driver z;
    memset(&z, 0, sizeof z);
    ec_driver_gpiochip.close(&z);
    /* read/write after close are refused, not crashes */
    uint8_t lv[1] = {1};
    CHECK(ec_driver_gpiochip.read(&d) == EC_ESTATE);
    CHECK(ec_driver_gpiochip.write(&d, lv, 1) == EC_ESTATE);
    /* a failing close still releases the fd (Linux semantics) and leaks nothing */
    CHECK(drv_open(&d, CHIP "inputs=5") == EC_OK);
    fk_fail(FK_OP_CLOSE, 0, EINTR, 1);
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_chip_short_name_and_ops)
{
    fk_install();
    ec_driver d;
    CHECK(drv_open(&d, "chip=gpiochip0;inputs=2") == EC_OK);
    CHECK(strcmp(fk_state.last_open_path, "/dev/gpiochip0") == 0);
    d.ops->close(&d);
    CHECK(strcmp(ec_driver_gpiochip.name, "gpiochip") == 0);
    CHECK(ec_driver_gpiochip.clock_ns == NULL);
    CHECK(ec_driver_gpiochip.read != NULL && ec_driver_gpiochip.write != NULL);
    fk_uninstall();
}

/* the fake must refuse what the kernel refuses, or the tests above prove little */
TEST(test_fake_kernel_validates)
{
    fk_install();
    int chip = ec_sys.open(FK_GPIO_PATH, O_RDWR | O_CLOEXEC);
    CHECK(chip >= FK_FD_BASE);
    struct gpio_v2_line_request r;

    memset(&r, 0, sizeof r);
    r.num_lines = 1;
    r.offsets[0] = 3;
    strcpy(r.consumer, "t");
    r.config.flags = F_IN | F_OUT;
    errno = 0;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.config.flags = F_IN | GPIO_V2_LINE_FLAG_OPEN_DRAIN;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.config.flags = GPIO_V2_LINE_FLAG_BIAS_PULL_UP; /* bias without a direction */
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.config.flags = F_IN | GPIO_V2_LINE_FLAG_BIAS_PULL_UP | GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.config.flags = F_IN | GPIO_V2_LINE_FLAG_USED;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.config.flags = F_IN;
    r.config.num_attrs = 1;
    r.config.attrs[0].attr.id = GPIO_V2_LINE_ATTR_ID_FLAGS;
    r.config.attrs[0].attr.flags = F_OUT | GPIO_V2_LINE_FLAG_EDGE_RISING; /* edge on an output */
    r.config.attrs[0].mask = 1;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.config.num_attrs = 11;
    r.config.attrs[0].attr.flags = F_IN;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.config.num_attrs = 0;
    r.padding[2] = 1;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.padding[2] = 0;
    r.consumer[0] = '\0';
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    strcpy(r.consumer, "t");
    r.offsets[0] = 32; /* the chip has 0..31 */
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.num_lines = 2;
    r.offsets[0] = 3;
    r.offsets[1] = 3;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EBUSY);
    r.num_lines = 0;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    r.num_lines = 65;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EINVAL);
    CHECK(fk_open_fd_count() == 1 && fk_state.n_line_requests == 0);

    /* a good request: line 3 in, line 4 out */
    memset(&r, 0, sizeof r);
    r.num_lines = 2;
    r.offsets[0] = 3;
    r.offsets[1] = 4;
    strcpy(r.consumer, "t");
    r.config.flags = F_IN;
    r.config.num_attrs = 1;
    r.config.attrs[0].attr.id = GPIO_V2_LINE_ATTR_ID_FLAGS;
    r.config.attrs[0].attr.flags = F_OUT;
    r.config.attrs[0].mask = 2;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == 0);
    int lfd = r.fd;
    CHECK(fk_fd_kind(lfd) == FK_FD_LINEREQ);
    /* the same line again: busy */
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &r) == -1 && errno == EBUSY);
    struct gpio_v2_line_values lv;
    memset(&lv, 0, sizeof lv);
    lv.mask = 1; /* setting an input */
    lv.bits = 1;
    CHECK(ec_sys.ioctl(lfd, GPIO_V2_LINE_SET_VALUES_IOCTL, &lv) == -1 && errno == EPERM);
    lv.mask = 0;
    CHECK(ec_sys.ioctl(lfd, GPIO_V2_LINE_SET_VALUES_IOCTL, &lv) == -1 && errno == EINVAL);
    CHECK(ec_sys.ioctl(lfd, GPIO_V2_LINE_GET_VALUES_IOCTL, &lv) == -1 && errno == EINVAL);
    lv.mask = 1ULL << 5; /* beyond the request's two lines only */
    CHECK(ec_sys.ioctl(lfd, GPIO_V2_LINE_GET_VALUES_IOCTL, &lv) == -1 && errno == EINVAL);
    /* v1 and unknown ioctls are refused */
    CHECK(ec_sys.ioctl(lfd, GPIOHANDLE_GET_LINE_VALUES_IOCTL, &lv) == -1 && errno == EINVAL);
    CHECK(ec_sys.ioctl(chip, GPIO_GET_LINEHANDLE_IOCTL, &r) == -1 && errno == EINVAL);
    /* line info reports the holder */
    struct gpio_v2_line_info info;
    memset(&info, 0, sizeof info);
    info.offset = 4;
    CHECK(ec_sys.ioctl(chip, GPIO_V2_GET_LINEINFO_IOCTL, &info) == 0);
    CHECK((info.flags & GPIO_V2_LINE_FLAG_USED) && (info.flags & F_OUT));
    CHECK(strcmp(info.consumer, "t") == 0);
    /* bad fds */
    CHECK(ec_sys.ioctl(12345, GPIO_V2_LINE_GET_VALUES_IOCTL, &lv) == -1 && errno == EBADF);
    CHECK(ec_sys.close(lfd) == 0);
    CHECK(ec_sys.close(lfd) == -1 && errno == EBADF);
    CHECK(ec_sys.close(chip) == 0);
    CHECK(ec_sys.open("/dev/gpiochip1", O_RDWR) == -1 && errno == ENOENT);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_uninstall_restores_seam)
{
    ec_sys_ops before = ec_sys;
    fk_install();
    CHECK(ec_sys.open != before.open && ec_sys.ioctl != before.ioctl && ec_sys.close != before.close);
    fk_install(); /* twice: still restores the original */
    fk_uninstall();
    CHECK(ec_sys.open == before.open && ec_sys.ioctl == before.ioctl && ec_sys.close == before.close);
    fk_uninstall(); /* harmless */
    CHECK(ec_sys.open == before.open);
}

int main(void)
{
    RUN(test_request_contents);
    RUN(test_default_consumer_and_bias);
    RUN(test_read_levels);
    RUN(test_write_levels_and_masks);
    RUN(test_output_options);
    RUN(test_inputs_only_and_outputs_only);
    RUN(test_max_lines);
    RUN(test_param_errors);
    RUN(test_open_failures);
    RUN(test_read_failure_faults_every_input);
    RUN(test_write_failure);
    RUN(test_close);
    RUN(test_chip_short_name_and_ops);
    RUN(test_fake_kernel_validates);
    RUN(test_uninstall_restores_seam);
    CTEST_END();
}
