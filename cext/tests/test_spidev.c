/* test_spidev.c - MAX31855 / MAX31856 decoding and the spidev driver against the fake kernel. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ctest.h"
#include "driver.h"
#include "edge_core.h"
#include "fake_kernel.h"
#include "max318xx.h"
#include "sys_seam.h"

#define ERRLEN 256
#define DEV "dev=/dev/spidev0.0;"
#define MSG1 SPI_IOC_MESSAGE(1)

static char err[ERRLEN];

static int drv_open(ec_driver *d, const char *params)
{
    memset(d, 0, sizeof *d);
    d->ops = &ec_driver_spidev;
    memset(err, 0, sizeof err);
    return ec_driver_spidev.open(d, params, err, sizeof err);
}

static int err_has(const char *what)
{
    if (strstr(err, what) != NULL) {
        return 1;
    }
    fprintf(stderr, "  err was: \"%s\", expected it to contain \"%s\"\n", err, what);
    return 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* "0110 0100 0000 00" -> its value, as the datasheet tables print bits */
static uint32_t bits(const char *s)
{
    uint32_t v = 0;
    for (; *s; s++) {
        if (*s == '0' || *s == '1') {
            v = (v << 1) | (uint32_t)(*s - '0');
        }
    }
    return v;
}

/* ------------------------------------------------------------------ MAX31855 decoding */

/* MAX31855 datasheet, thermocouple temperature data format (D31..D18) */
static const struct {
    double c;
    const char *b;
} tc55[] = {
    {1600.00, "0110 0100 0000 00"}, {1000.00, "0011 1110 1000 00"}, {100.75, "0000 0110 0100 11"},
    {25.00, "0000 0001 1001 00"},   {0.00, "0000 0000 0000 00"},    {-0.25, "1111 1111 1111 11"},
    {-1.00, "1111 1111 1111 00"},   {-250.00, "1111 0000 0110 00"},
};

/* MAX31855 datasheet, reference-junction temperature data format (D15..D4) */
static const struct {
    double c;
    const char *b;
} cj55[] = {
    {127.0000, "0111 1111 0000"}, {100.5625, "0110 0100 1001"}, {25.0000, "0001 1001 0000"},
    {0.0000, "0000 0000 0000"},   {-0.0625, "1111 1111 1111"},  {-1.0000, "1111 1111 0000"},
    {-20.0000, "1110 1100 0000"}, {-55.0000, "1100 1001 0000"},
};

TEST(test_max31855_datasheet_values)
{
    uint32_t cj25 = bits("0001 1001 0000");
    uint32_t tc25 = bits("0000 0001 1001 00");
    for (size_t i = 0; i < sizeof tc55 / sizeof tc55[0]; i++) {
        uint32_t frame = (bits(tc55[i].b) << 18) | (cj25 << 4);
        double tc = -999, cj = -999;
        uint32_t s0 = 99, s1 = 99;
        CHECK(ec_max31855_decode(frame, &tc, &cj, &s0, &s1) == EC_OK);
        CHECK(tc == tc55[i].c); /* exact: quarter degrees are representable */
        CHECK(cj == 25.0);
        CHECK(s0 == EC_ST_OK && s1 == EC_ST_OK);
    }
    for (size_t i = 0; i < sizeof cj55 / sizeof cj55[0]; i++) {
        uint32_t frame = (tc25 << 18) | (bits(cj55[i].b) << 4);
        double tc = -999, cj = -999;
        uint32_t s0 = 99, s1 = 99;
        CHECK(ec_max31855_decode(frame, &tc, &cj, &s0, &s1) == EC_OK);
        CHECK(tc == 25.0);
        CHECK(cj == cj55[i].c);
        /* +127 degC is beyond the chip's +125 degC operating range */
        uint32_t want = cj55[i].c > 125.0 ? EC_ST_RANGE : EC_ST_OK;
        CHECK(s1 == want);
        CHECK(s0 == want); /* the compensation then is not trustworthy either */
    }
    /* frames captured from a real K-type board (0 and 50 degC from a calibrator) */
    double tc, cj;
    uint32_t s0, s1;
    CHECK(ec_max31855_decode(0x00181570u, &tc, &cj, &s0, &s1) == EC_OK);
    CHECK(tc == 1.5 && cj == 21.4375 && s0 == EC_ST_OK && s1 == EC_ST_OK);
    CHECK(ec_max31855_decode(0x03241590u, &tc, &cj, &s0, &s1) == EC_OK);
    CHECK(tc == 50.25 && cj == 21.5625);
    /* extremes of the 14- and 12-bit fields */
    CHECK(ec_max31855_decode((0x1FFFu << 18) | (0x190u << 4), &tc, &cj, &s0, &s1) == EC_OK);
    CHECK(tc == 2047.75);
    CHECK(ec_max31855_decode((0x2000u << 18) | (0x800u << 4), &tc, &cj, &s0, &s1) == EC_OK);
    CHECK(tc == -2048.0 && cj == -128.0 && s1 == EC_ST_RANGE);
}

TEST(test_max31855_fault_bits)
{
    uint32_t good = fk_max31855_encode(412.5, 24.0, 0);
    double tc, cj;
    uint32_t s0, s1;
    CHECK(ec_max31855_decode(good, &tc, &cj, &s0, &s1) == EC_OK);
    CHECK(tc == 412.5 && cj == 24.0 && s0 == EC_ST_OK && s1 == EC_ST_OK);
    static const uint32_t faults[] = {
        EC_MAX31855_FAULT | EC_MAX31855_OC,
        EC_MAX31855_FAULT | EC_MAX31855_SCG,
        EC_MAX31855_FAULT | EC_MAX31855_SCV,
        EC_MAX31855_FAULT | EC_MAX31855_OC | EC_MAX31855_SCV,
        EC_MAX31855_FAULT,  /* summary bit alone */
        EC_MAX31855_OC,     /* detail bit without the summary: still a fault */
        EC_MAX31855_SCG,
        EC_MAX31855_SCV,
    };
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        int rc = ec_max31855_decode(good | faults[i], &tc, &cj, &s0, &s1);
        CHECK(rc == EC_OK); /* the chip answered; the thermocouple is faulty */
        CHECK(s0 == EC_ST_FAULT);
        CHECK(s1 == EC_ST_OK);
        CHECK(tc == 412.5 && cj == 24.0);
    }
    /* frames no working chip sends */
    const uint32_t bad[] = {good | EC_MAX31855_RES17, good | EC_MAX31855_RES3, 0xFFFFFFFFu, 0u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(ec_max31855_decode(bad[i], &tc, &cj, &s0, &s1) == EC_EIO);
        CHECK(s0 == EC_ST_FAULT && s1 == EC_ST_FAULT);
    }
    CHECK(ec_max31855_decode(good, NULL, &cj, &s0, &s1) == EC_EINVAL);
    CHECK(ec_max31855_decode(good, &tc, &cj, &s0, NULL) == EC_EINVAL);
}

/* ------------------------------------------------------------------ MAX31856 decoding */

TEST(test_max31856_values)
{
    /* registers 0x0A..0x0F built by hand from the bit weights:
     * CJTH = sign, 2^6..2^0; CJTL = 2^-1..2^-6, 2 unused bits;
     * LTCBH = sign, 2^10..2^4; LTCBM = 2^3..2^-4; LTCBL = 2^-5..2^-7, 5 unused bits */
    static const struct {
        uint8_t r[6];
        double tc, cj;
    } v[] = {
        {{0x19, 0x00, 0x64, 0x00, 0x00, 0}, 1600.0, 25.0},
        {{0x19, 0x00, 0x3E, 0x80, 0x00, 0}, 1000.0, 25.0},
        {{0x19, 0x00, 0x06, 0x4F, 0x00, 0}, 100.9375, 25.0},
        {{0x19, 0x00, 0x01, 0x90, 0x00, 0}, 25.0, 25.0},
        {{0x19, 0x00, 0x00, 0x00, 0x20, 0}, 0.0078125, 25.0},
        {{0x19, 0x00, 0x00, 0x00, 0x00, 0}, 0.0, 25.0},
        {{0x19, 0x00, 0xFF, 0xFF, 0xE0, 0}, -0.0078125, 25.0},
        {{0x19, 0x00, 0xFF, 0xFC, 0x00, 0}, -0.25, 25.0},
        {{0x19, 0x00, 0xFF, 0xF0, 0x00, 0}, -1.0, 25.0},
        {{0x19, 0x00, 0xF0, 0x60, 0x00, 0}, -250.0, 25.0},
        {{0x19, 0x00, 0x7F, 0xFF, 0xE0, 0}, 2047.9921875, 25.0},
        {{0x19, 0x00, 0x80, 0x00, 0x00, 0}, -2048.0, 25.0},
        {{0x19, 0x03, 0x01, 0x90, 0x1F, 0}, 25.0, 25.0}, /* unused low bits ignored */
        {{0x7F, 0xFC, 0x01, 0x90, 0x00, 0}, 25.0, 127.984375},
        {{0x00, 0x04, 0x01, 0x90, 0x00, 0}, 25.0, 0.015625},
        {{0x00, 0x00, 0x01, 0x90, 0x00, 0}, 25.0, 0.0},
        {{0xFF, 0xFC, 0x01, 0x90, 0x00, 0}, 25.0, -0.015625},
        {{0xFF, 0x00, 0x01, 0x90, 0x00, 0}, 25.0, -1.0},
        {{0xC9, 0x00, 0x01, 0x90, 0x00, 0}, 25.0, -55.0},
        {{0x80, 0x00, 0x01, 0x90, 0x00, 0}, 25.0, -128.0},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        double tc = -999, cj = -999;
        uint32_t s0 = 99, s1 = 99;
        CHECK(ec_max31856_decode(v[i].r, &tc, &cj, &s0, &s1) == EC_OK);
        CHECK(tc == v[i].tc);
        CHECK(cj == v[i].cj);
        CHECK(s0 == EC_ST_OK && s1 == EC_ST_OK); /* status comes from SR only */
    }
    uint8_t r[6] = {0};
    double tc, cj;
    uint32_t s0, s1;
    CHECK(ec_max31856_decode(NULL, &tc, &cj, &s0, &s1) == EC_EINVAL);
    CHECK(ec_max31856_decode(r, &tc, NULL, &s0, &s1) == EC_EINVAL);
}

TEST(test_max31856_fault_bits)
{
    static const struct {
        uint8_t sr;
        uint32_t tc, cj;
    } v[] = {
        {EC_MAX31856_SR_OPEN, EC_ST_FAULT, EC_ST_OK},
        {EC_MAX31856_SR_OVUV, EC_ST_FAULT, EC_ST_OK},
        {EC_MAX31856_SR_TCLOW, EC_ST_RANGE, EC_ST_OK},
        {EC_MAX31856_SR_TCHIGH, EC_ST_RANGE, EC_ST_OK},
        {EC_MAX31856_SR_CJLOW, EC_ST_OK, EC_ST_RANGE},
        {EC_MAX31856_SR_CJHIGH, EC_ST_OK, EC_ST_RANGE},
        {EC_MAX31856_SR_TCRANGE, EC_ST_RANGE, EC_ST_OK},
        {EC_MAX31856_SR_CJRANGE, EC_ST_RANGE, EC_ST_RANGE},
        {EC_MAX31856_SR_OPEN | EC_MAX31856_SR_TCRANGE, EC_ST_FAULT | EC_ST_RANGE, EC_ST_OK},
        {0xFF, EC_ST_FAULT | EC_ST_RANGE, EC_ST_RANGE},
        {0x00, EC_ST_OK, EC_ST_OK},
    };
    /* the datasheet's bit positions */
    CHECK(EC_MAX31856_SR_CJRANGE == 0x80 && EC_MAX31856_SR_TCRANGE == 0x40);
    CHECK(EC_MAX31856_SR_CJHIGH == 0x20 && EC_MAX31856_SR_CJLOW == 0x10);
    CHECK(EC_MAX31856_SR_TCHIGH == 0x08 && EC_MAX31856_SR_TCLOW == 0x04);
    CHECK(EC_MAX31856_SR_OVUV == 0x02 && EC_MAX31856_SR_OPEN == 0x01);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint8_t r[6] = {0x19, 0x00, 0x01, 0x90, 0x00, v[i].sr};
        double tc, cj;
        uint32_t s0, s1;
        CHECK(ec_max31856_decode(r, &tc, &cj, &s0, &s1) == EC_OK);
        CHECK(s0 == v[i].tc);
        CHECK(s1 == v[i].cj);
        CHECK(tc == 25.0 && cj == 25.0);
    }
}

TEST(test_max31856_config_bytes)
{
    static const char types[] = "BEJKNRST";
    for (int i = 0; i < 8; i++) {
        uint8_t cr1 = 0xEE;
        CHECK(ec_max31856_tc_code(types[i]) == i);
        CHECK(ec_max31856_tc_code((char)(types[i] - 'A' + 'a')) == i);
        CHECK(ec_max31856_cr1(types[i], 1, &cr1) == EC_OK && cr1 == i);
    }
    static const int avgs[] = {1, 2, 4, 8, 16};
    for (int i = 0; i < 5; i++) {
        uint8_t cr1 = 0;
        CHECK(ec_max31856_cr1('K', avgs[i], &cr1) == EC_OK);
        CHECK(cr1 == ((i << 4) | 3));
    }
    uint8_t b = 0;
    CHECK(ec_max31856_cr1('K', 3, &b) == EC_EINVAL);
    CHECK(ec_max31856_cr1('K', 32, &b) == EC_EINVAL);
    CHECK(ec_max31856_cr1('X', 1, &b) == EC_EINVAL);
    CHECK(ec_max31856_cr1('C', 1, &b) == EC_EINVAL);
    CHECK(ec_max31856_tc_code('G') == EC_EINVAL);

    CHECK(ec_max31856_cr0(50, 1, &b) == EC_OK && b == 0x91);
    CHECK(ec_max31856_cr0(60, 1, &b) == EC_OK && b == 0x90);
    CHECK(ec_max31856_cr0(50, 2, &b) == EC_OK && b == 0xA1);
    CHECK(ec_max31856_cr0(60, 3, &b) == EC_OK && b == 0xB0);
    CHECK(ec_max31856_cr0(60, 0, &b) == EC_OK && b == 0x80);
    CHECK(ec_max31856_cr0(55, 1, &b) == EC_EINVAL);
    CHECK(ec_max31856_cr0(50, 4, &b) == EC_EINVAL);
    CHECK(ec_max31856_cr0(50, 1, NULL) == EC_EINVAL);
}

/* ------------------------------------------------------------------ MAX31856 through the fake */

TEST(test_max31856_open_writes_config)
{
    fk_install();
    static const char types[] = "BEJKNRST";
    static const int mains[] = {50, 60};
    for (int t = 0; t < 8; t++) {
        for (int m = 0; m < 2; m++) {
            fk_spi_set_chip(FK_SPI_MAX31856);
            fk_state.n_reg_writes = 0;
            char params[160];
            snprintf(params, sizeof params, DEV "chip=max31856;tc=%c;mains=%d;settle_ms=0", types[t],
                     mains[m]);
            ec_driver d;
            CHECK(drv_open(&d, params) == EC_OK);
            uint8_t cr0 = (uint8_t)(0x90 | (mains[m] == 50));
            CHECK(fk_state.max31856_regs[EC_MAX31856_REG_CR0] == cr0);
            CHECK(fk_state.max31856_regs[EC_MAX31856_REG_CR1] == t);
            /* CR0 first with conversions stopped (the filter must not change in
             * automatic mode), then CR1 and MASK, then CR0 with CMODE */
            CHECK(fk_state.n_reg_writes == 4);
            CHECK(fk_state.reg_writes[0].reg == 0 && fk_state.reg_writes[0].value == (cr0 & 0x7F));
            CHECK(fk_state.reg_writes[1].reg == 1 && fk_state.reg_writes[1].value == t);
            CHECK(fk_state.reg_writes[2].reg == 2);
            CHECK(fk_state.reg_writes[3].reg == 0 && fk_state.reg_writes[3].value == cr0);
            /* MASK: open circuit and over/under voltage drive the FAULT pin */
            uint8_t mask = fk_state.max31856_regs[EC_MAX31856_REG_MASK];
            CHECK((mask & (EC_MAX31856_SR_OPEN | EC_MAX31856_SR_OVUV)) == 0);
            CHECK((mask & 0x3C) == 0x3C);
            d.ops->close(&d);
        }
    }
    /* averaging, open-circuit mode */
    static const int avgs[] = {1, 2, 4, 8, 16};
    for (int i = 0; i < 5; i++) {
        fk_spi_set_chip(FK_SPI_MAX31856);
        char params[160];
        snprintf(params, sizeof params, DEV "chip=max31856;tc=J;avg=%d;oc=2;settle_ms=0", avgs[i]);
        ec_driver d;
        CHECK(drv_open(&d, params) == EC_OK);
        CHECK(fk_state.max31856_regs[EC_MAX31856_REG_CR1] == ((i << 4) | 2));
        CHECK(fk_state.max31856_regs[EC_MAX31856_REG_CR0] == 0xA0);
        d.ops->close(&d);
    }
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_max31856_spi_setup_and_read)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    ec_driver d;
    CHECK(drv_open(&d, DEV "chip=max31856;tc=K;mains=50;speed_hz=2000000;settle_ms=0") == EC_OK);
    CHECK(d.n_ai == 2 && d.n_di == 0 && d.n_do == 0);
    CHECK(strcmp(fk_state.last_open_path, "/dev/spidev0.0") == 0);
    CHECK((fk_state.last_open_flags & O_ACCMODE) == O_RDWR && (fk_state.last_open_flags & O_CLOEXEC));
    CHECK(fk_state.spi_mode == 1); /* MAX31856: CPHA = 1 */
    CHECK(fk_state.spi_bits == 8 && fk_state.n_spi_bits_sets == 1);
    CHECK(fk_state.spi_max_speed_hz == 2000000);
    CHECK(d.ai_status[0] == EC_ST_NODATA && d.ai_status[1] == EC_ST_NODATA);

    fk_max31856_set(1000.5, 24.25, 0);
    int m0 = fk_state.n_spi_messages;
    int64_t t0 = ec_monotonic_ns();
    CHECK(d.ops->read(&d) == EC_OK);
    int64_t t1 = ec_monotonic_ns();
    CHECK(fk_state.n_spi_messages == m0 + 1);
    CHECK(fk_state.last_len == 17);     /* address + all 16 registers */
    CHECK(fk_state.last_tx[0] == 0x00); /* a read from CR0 */
    CHECK(fk_state.last_speed_hz == 2000000);
    CHECK(d.ai[0] == 1000.5 && d.ai[1] == 24.25);
    CHECK(d.ai_status[0] == EC_ST_OK && d.ai_status[1] == EC_ST_OK);
    CHECK(d.ai_t_ns[0] >= t0 && d.ai_t_ns[0] <= t1 && d.ai_t_ns[1] == d.ai_t_ns[0]);

    /* a negative reading with an open thermocouple */
    sleep_ms(110);
    fk_max31856_set(-12.0078125, -3.5, EC_MAX31856_SR_OPEN);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.ai[0] == -12.0078125 && d.ai[1] == -3.5);
    CHECK(d.ai_status[0] == EC_ST_FAULT && d.ai_status[1] == EC_ST_OK);
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_max31856_poll_caching)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    ec_driver d;
    CHECK(drv_open(&d, DEV "chip=max31856;poll_ms=400;settle_ms=0") == EC_OK);
    fk_max31856_set(300.0, 20.0, 0);
    int m0 = fk_state.n_spi_messages;
    CHECK(d.ops->read(&d) == EC_OK);
    int64_t t_first = d.ai_t_ns[0];
    CHECK(fk_state.n_spi_messages == m0 + 1);
    fk_max31856_set(301.0, 21.0, 0);
    for (int i = 0; i < 50; i++) { /* the sampler's ticks within poll_ms */
        CHECK(d.ops->read(&d) == EC_OK);
    }
    CHECK(fk_state.n_spi_messages == m0 + 1); /* one SPI transfer only */
    CHECK(d.ai[0] == 300.0 && d.ai[1] == 20.0 && d.ai_t_ns[0] == t_first);
    /* the core may scribble on its copy: the cache re-delivers */
    d.ai[0] = -1;
    d.ai_status[0] = EC_ST_STALE;
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.ai[0] == 300.0 && d.ai_status[0] == EC_ST_OK);
    sleep_ms(410);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(fk_state.n_spi_messages == m0 + 2);
    CHECK(d.ai[0] == 301.0 && d.ai[1] == 21.0 && d.ai_t_ns[0] > t_first);
    d.ops->close(&d);
    fk_uninstall();
}

TEST(test_max31856_settle_after_open)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    fk_max31856_set(500.0, 22.0, 0);
    ec_driver d;
    /* default settle: the first conversion is not done right after open */
    CHECK(drv_open(&d, DEV "chip=max31856;tc=K") == EC_OK);
    int m0 = fk_state.n_spi_messages;
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.ai_status[0] == EC_ST_NODATA && d.ai_status[1] == EC_ST_NODATA);
    CHECK(fk_state.n_spi_messages == m0); /* no traffic while settling */
    d.ops->close(&d);

    CHECK(drv_open(&d, DEV "chip=max31856;settle_ms=80") == EC_OK);
    m0 = fk_state.n_spi_messages;
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.ai_status[0] == EC_ST_NODATA);
    sleep_ms(90);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(fk_state.n_spi_messages == m0 + 1);
    CHECK(d.ai[0] == 500.0 && d.ai_status[0] == EC_ST_OK && d.ai_status[1] == EC_ST_OK);
    d.ops->close(&d);
    fk_uninstall();
}

TEST(test_max31856_reset_is_detected_and_repaired)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    ec_driver d;
    CHECK(drv_open(&d, DEV "chip=max31856;tc=N;mains=50;poll_ms=10;settle_ms=200") == EC_OK);
    sleep_ms(210);
    fk_max31856_set(800.0, 30.0, 0);
    CHECK(d.ops->read(&d) == EC_OK && d.ai_status[0] == EC_ST_OK);
    uint8_t cr0 = fk_state.max31856_regs[0], cr1 = fk_state.max31856_regs[1];

    /* a power glitch: registers back to power-on values, conversions stopped */
    fk_max31856_power_on_reset();
    sleep_ms(15);
    CHECK(d.ops->read(&d) == EC_EIO);
    CHECK(d.ai_status[0] == EC_ST_FAULT && d.ai_status[1] == EC_ST_FAULT);
    CHECK(fk_state.max31856_regs[0] == cr0 && fk_state.max31856_regs[1] == cr1); /* rewritten */
    /* still FAULT while the first conversion runs, without SPI traffic */
    sleep_ms(15);
    int m0 = fk_state.n_spi_messages;
    CHECK(d.ops->read(&d) == EC_EIO);
    CHECK(d.ai_status[0] == EC_ST_FAULT && fk_state.n_spi_messages == m0);
    /* then good again */
    fk_max31856_set(801.0, 30.5, 0);
    sleep_ms(200);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.ai[0] == 801.0 && d.ai_status[0] == EC_ST_OK && d.ai_status[1] == EC_ST_OK);
    d.ops->close(&d);
    fk_uninstall();
}

TEST(test_spi_read_failure)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    ec_driver d;
    CHECK(drv_open(&d, DEV "chip=max31856;poll_ms=100;settle_ms=0") == EC_OK);
    fk_max31856_set(200.0, 20.0, 0);
    CHECK(d.ops->read(&d) == EC_OK);
    sleep_ms(110);
    fk_fail(FK_OP_IOCTL, MSG1, EIO, 1);
    int64_t t0 = ec_monotonic_ns();
    CHECK(d.ops->read(&d) == EC_EIO);
    CHECK(d.ai_status[0] == EC_ST_FAULT && d.ai_status[1] == EC_ST_FAULT);
    CHECK(d.ai_t_ns[0] >= t0);
    /* within poll_ms: the failure is re-reported, the bus is not retried */
    int m0 = fk_state.n_spi_messages;
    CHECK(d.ops->read(&d) == EC_EIO);
    CHECK(d.ai_status[0] == EC_ST_FAULT && fk_state.n_spi_messages == m0);
    sleep_ms(110);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(d.ai[0] == 200.0 && d.ai_status[0] == EC_ST_OK && d.ai_status[1] == EC_ST_OK);
    d.ops->close(&d);
    fk_uninstall();
}

/* ------------------------------------------------------------------ MAX31855 through the fake */

TEST(test_max31855_through_fake)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31855);
    fk_max31855_set_frame(fk_max31855_encode(100.75, 25.0625, 0));
    ec_driver d;
    CHECK(drv_open(&d, DEV "chip=max31855;tc=K") == EC_OK);
    CHECK(fk_state.spi_mode == 0);
    CHECK(fk_state.spi_max_speed_hz == 1000000);
    CHECK(fk_state.n_reg_writes == 0);
    CHECK(d.n_ai == 2 && d.ai_status[0] == EC_ST_NODATA);
    int m0 = fk_state.n_spi_messages;
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(fk_state.n_spi_messages == m0 + 1 && fk_state.last_len == 4);
    CHECK(d.ai[0] == 100.75 && d.ai[1] == 25.0625);
    CHECK(d.ai_status[0] == EC_ST_OK && d.ai_status[1] == EC_ST_OK);
    /* cached within poll_ms (100) */
    fk_max31855_set_frame(fk_max31855_encode(-20.5, 24.0, EC_MAX31855_FAULT | EC_MAX31855_OC));
    CHECK(d.ops->read(&d) == EC_OK && d.ai[0] == 100.75);
    CHECK(fk_state.n_spi_messages == m0 + 1);
    sleep_ms(110);
    CHECK(d.ops->read(&d) == EC_OK);
    CHECK(fk_state.n_spi_messages == m0 + 2);
    CHECK(d.ai[0] == -20.5 && d.ai[1] == 24.0);
    CHECK(d.ai_status[0] == EC_ST_FAULT && d.ai_status[1] == EC_ST_OK);
    /* the bus goes dead (MISO floating high): EC_EIO and FAULT */
    fk_spi_set_chip(FK_SPI_NONE);
    sleep_ms(110);
    CHECK(d.ops->read(&d) == EC_EIO);
    CHECK(d.ai_status[0] == EC_ST_FAULT && d.ai_status[1] == EC_ST_FAULT);
    d.ops->close(&d);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

/* ------------------------------------------------------------------ errors */

TEST(test_param_errors)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    const struct {
        const char *params;
        const char *msg;
    } cases[] = {
        {"", "missing dev="},
        {"chip=max31855", "missing dev="},
        {"dev=;chip=max31855", "missing dev="},
        {DEV "tc=K", "missing chip="},
        {DEV "chip=max6675", "unknown chip 'max6675'"},
        {DEV "chip=MAX31855X", "unknown chip"},
        {DEV "chip=max31856;tc=X", "bad tc 'X'"},
        {DEV "chip=max31856;tc=KK", "bad tc 'KK'"},
        {DEV "chip=max31856;tc=", "bad tc ''"},
        {DEV "chip=max31855;tc=B", "no type-B MAX31855"},
        {DEV "chip=max31856;speed_hz=0", "speed_hz=0 is not valid"},
        {DEV "chip=max31856;speed_hz=6000000", "speed_hz=6000000 is not valid: expected an integer 1..5000000"},
        {DEV "chip=max31856;speed_hz=1e6", "speed_hz=1e6 is not valid"},
        {DEV "chip=max31856;speed_hz=", "speed_hz= is not valid"},
        {DEV "chip=max31855;poll_ms=50", "poll_ms must be 100..60000 for the max31855"},
        {DEV "chip=max31856;poll_ms=5", "poll_ms=5 is not valid: expected an integer 10..60000"},
        {DEV "chip=max31856;poll_ms=-1", "poll_ms=-1 is not valid"},
        {DEV "chip=max31856;avg=3", "avg=3 is not valid: expected 1, 2, 4, 8 or 16"},
        {DEV "chip=max31856;avg=32", "avg=32 is not valid"},
        {DEV "chip=max31855;avg=2", "avg= applies to the max31856 only"},
        {DEV "chip=max31856;mains=55", "mains=55 is not valid"},
        {DEV "chip=max31856;mains=5", "mains=5 is not valid"},
        {DEV "chip=max31855;mains=50", "mains= applies to the max31856 only"},
        {DEV "chip=max31856;oc=0", "oc=0 is not valid"},
        {DEV "chip=max31856;mode=4", "mode=4 is not valid"},
        {DEV "chip=max31856;settle_ms=20000", "settle_ms=20000 is not valid"},
        {DEV "chip=max31856;speed=1000", "unknown parameter 'speed'"},
        {DEV "chip=max31856;tc=K;tc=J", "parameter 'tc' given twice"},
        {DEV "chip=max31856;avg", "parameter 'avg' has no value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ec_driver d;
        CHECK(drv_open(&d, cases[i].params) == EC_EINVAL);
        CHECK(err_has(cases[i].msg));
        CHECK(d.priv == NULL && d.n_ai == 0);
        d.ops->close(&d);
    }
    CHECK(fk_state.n_opens == 0); /* refused before touching the device */
    ec_driver d;
    memset(&d, 0, sizeof d);
    CHECK(ec_driver_spidev.open(&d, NULL, err, sizeof err) == EC_EINVAL);
    CHECK(err_has("missing dev="));
    fk_uninstall();
}

TEST(test_open_failures)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    ec_driver d;

    CHECK(drv_open(&d, "dev=/dev/spidev1.0;chip=max31856") == EC_EIO);
    CHECK(err_has("cannot open /dev/spidev1.0: "));
    CHECK(err_has(strerror(ENOENT)));

    fk_fail(FK_OP_OPEN, 0, EACCES, 1);
    CHECK(drv_open(&d, DEV "chip=max31856") == EC_EIO);
    CHECK(err_has("cannot open /dev/spidev0.0: "));
    CHECK(err_has(strerror(EACCES)));

    static const struct {
        unsigned long req;
        const char *name;
    } ioctls[] = {
        {SPI_IOC_WR_MODE, "SPI_IOC_WR_MODE on /dev/spidev0.0 failed"},
        {SPI_IOC_WR_BITS_PER_WORD, "SPI_IOC_WR_BITS_PER_WORD on /dev/spidev0.0 failed"},
        {SPI_IOC_WR_MAX_SPEED_HZ, "SPI_IOC_WR_MAX_SPEED_HZ on /dev/spidev0.0 failed"},
        {MSG1, "SPI_IOC_MESSAGE on /dev/spidev0.0 failed"},
    };
    for (size_t i = 0; i < sizeof ioctls / sizeof ioctls[0]; i++) {
        fk_fail(FK_OP_IOCTL, ioctls[i].req, EINVAL, 1);
        CHECK(drv_open(&d, DEV "chip=max31856") == EC_EIO);
        CHECK(err_has(ioctls[i].name));
        CHECK(err_has(strerror(EINVAL)));
        CHECK(d.priv == NULL && fk_open_fd_count() == 0);
    }
    fk_fail(FK_OP_IOCTL, MSG1, EIO, 1);
    CHECK(drv_open(&d, DEV "chip=max31855") == EC_EIO);
    CHECK(err_has("SPI_IOC_MESSAGE on /dev/spidev0.0 failed"));

    /* no MAX31856 on the bus: the configuration does not read back */
    fk_spi_set_chip(FK_SPI_NONE);
    CHECK(drv_open(&d, DEV "chip=max31856") == EC_EIO);
    CHECK(err_has("no MAX31856 answering on /dev/spidev0.0"));
    CHECK(err_has("read back CR0=0xFF"));
    /* a MAX31856 driven in the wrong SPI mode reads back garbage */
    fk_spi_set_chip(FK_SPI_MAX31856);
    CHECK(drv_open(&d, DEV "chip=max31856;mode=0") == EC_EIO);
    CHECK(err_has("no MAX31856 answering"));
    CHECK(drv_open(&d, DEV "chip=max31856;mode=3;settle_ms=0") == EC_OK); /* mode 3 is fine */
    d.ops->close(&d);

    /* no MAX31855: MISO floating high, or stuck low */
    fk_spi_set_chip(FK_SPI_NONE);
    fk_state.spi_miso_idle = 0xFF;
    CHECK(drv_open(&d, DEV "chip=max31855") == EC_EIO);
    CHECK(err_has("no MAX31855 answering on /dev/spidev0.0: read 0xFFFFFFFF"));
    fk_state.spi_miso_idle = 0x00;
    CHECK(drv_open(&d, DEV "chip=max31855") == EC_EIO);
    CHECK(err_has("read 0x00000000"));
    /* an open thermocouple is not a missing chip */
    fk_spi_set_chip(FK_SPI_MAX31855);
    fk_max31855_set_frame(fk_max31855_encode(0, 23.0, EC_MAX31855_FAULT | EC_MAX31855_OC));
    CHECK(drv_open(&d, DEV "chip=max31855") == EC_OK);
    CHECK(d.ops->read(&d) == EC_OK && d.ai_status[0] == EC_ST_FAULT);
    d.ops->close(&d);

    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

TEST(test_close_and_ops)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31856);
    ec_driver d;
    CHECK(drv_open(&d, DEV "chip=max31856;settle_ms=0") == EC_OK);
    CHECK(fk_open_fd_count() == 1);
    uint8_t lv[1] = {1};
    CHECK(d.ops->write(&d, lv, 0) == EC_OK); /* no outputs */
    CHECK(d.ops->write(&d, lv, 1) == EC_EINVAL);
    d.ops->close(&d);
    CHECK(d.priv == NULL && fk_open_fd_count() == 0 && fk_state.n_closes == 1);
    d.ops->close(&d); /* twice */
    CHECK(fk_state.n_closes == 1);
    CHECK(ec_driver_spidev.read(&d) == EC_ESTATE);
    ec_driver z;
    memset(&z, 0, sizeof z);
    ec_driver_spidev.close(&z);
    CHECK(strcmp(ec_driver_spidev.name, "spidev") == 0);
    CHECK(ec_driver_spidev.clock_ns == NULL);
    fk_uninstall();
}

/* the fake must refuse what spidev refuses, or the tests above prove little */
TEST(test_fake_spidev_validates)
{
    fk_install();
    fk_spi_set_chip(FK_SPI_MAX31855);
    fk_max31855_set_frame(0x12345678u);
    int fd = ec_sys.open(FK_SPI_PATH, O_RDWR);
    CHECK(fd >= FK_FD_BASE);
    uint8_t m = 4;
    CHECK(ec_sys.ioctl(fd, SPI_IOC_WR_MODE, &m) == -1 && errno == EINVAL);
    m = 0;
    CHECK(ec_sys.ioctl(fd, SPI_IOC_WR_MODE, &m) == 0);
    uint32_t hz = 0;
    CHECK(ec_sys.ioctl(fd, SPI_IOC_WR_MAX_SPEED_HZ, &hz) == -1 && errno == EINVAL);
    uint8_t b = 16;
    CHECK(ec_sys.ioctl(fd, SPI_IOC_WR_BITS_PER_WORD, &b) == -1 && errno == EINVAL);
    uint32_t junk = 0;
    CHECK(ec_sys.ioctl(fd, _IOR(SPI_IOC_MAGIC, 9, uint32_t), &junk) == -1 && errno == ENOTTY);
    CHECK(ec_sys.ioctl(fd, GPIO_V2_LINE_GET_VALUES_IOCTL, &junk) == -1 && errno == ENOTTY);

    uint8_t rx[8];
    struct spi_ioc_transfer x[2];
    memset(x, 0, sizeof x);
    x[0].rx_buf = (uint64_t)(uintptr_t)rx;
    x[0].len = 4;
    CHECK(ec_sys.ioctl(fd, MSG1, x) == 4); /* returns the bytes moved */
    CHECK(rx[0] == 0x12 && rx[1] == 0x34 && rx[2] == 0x56 && rx[3] == 0x78);
    x[0].len = 2;
    x[1].rx_buf = (uint64_t)(uintptr_t)(rx + 2);
    x[1].len = 2;
    memset(rx, 0, sizeof rx);
    CHECK(ec_sys.ioctl(fd, SPI_IOC_MESSAGE(2), x) == 4); /* one CS-low frame */
    CHECK(rx[0] == 0x12 && rx[3] == 0x78);
    x[0].len = 0;
    CHECK(ec_sys.ioctl(fd, MSG1, x) == -1 && errno == EMSGSIZE);
    x[0].len = 5000;
    CHECK(ec_sys.ioctl(fd, MSG1, x) == -1 && errno == EMSGSIZE);
    x[0].len = 4;
    x[0].bits_per_word = 16;
    CHECK(ec_sys.ioctl(fd, MSG1, x) == -1 && errno == EINVAL);
    x[0].bits_per_word = 0;
    x[0].pad = 1; /* an uninitialised transfer struct */
    CHECK(ec_sys.ioctl(fd, MSG1, x) == -1 && errno == EINVAL);
    x[0].pad = 0;
    CHECK(ec_sys.ioctl(fd, _IOW(SPI_IOC_MAGIC, 0, char[7]), x) == -1 && errno == ENOTTY);
    /* wrong clock phase for the chip: bits slip */
    m = 1;
    CHECK(ec_sys.ioctl(fd, SPI_IOC_WR_MODE, &m) == 0);
    CHECK(ec_sys.ioctl(fd, MSG1, x) == 4);
    CHECK(rx[0] == (0x12 >> 1));
    /* injected failure, then normal again */
    m = 0;
    CHECK(ec_sys.ioctl(fd, SPI_IOC_WR_MODE, &m) == 0);
    fk_fail(FK_OP_IOCTL, 0, ETIMEDOUT, 1);
    CHECK(ec_sys.ioctl(fd, MSG1, x) == -1 && errno == ETIMEDOUT);
    CHECK(ec_sys.ioctl(fd, MSG1, x) == 4);
    CHECK(fk_state.n_failed == 1);
    CHECK(ec_sys.close(fd) == 0);
    CHECK(ec_sys.ioctl(fd, MSG1, x) == -1 && errno == EBADF);
    CHECK(fk_open_fd_count() == 0);

    /* the MAX31856 model: write with auto-increment, read-only data registers */
    fk_spi_set_chip(FK_SPI_MAX31856);
    fd = ec_sys.open(FK_SPI_PATH, O_RDWR);
    m = 1;
    CHECK(ec_sys.ioctl(fd, SPI_IOC_WR_MODE, &m) == 0);
    uint8_t tx[4] = {0x80 | 0x0E, 0x11, 0x22, 0x33}; /* 0x0E, 0x0F read-only, wraps to 0x00 */
    memset(x, 0, sizeof x);
    x[0].tx_buf = (uint64_t)(uintptr_t)tx;
    x[0].len = 4;
    CHECK(ec_sys.ioctl(fd, MSG1, x) == 4);
    CHECK(fk_state.max31856_regs[0x0E] == 0 && fk_state.max31856_regs[0x0F] == 0);
    CHECK(fk_state.max31856_regs[0x00] == 0x33);
    CHECK(fk_state.n_reg_writes == 3 && fk_max31856_last_write(0) == 0x33);
    uint8_t rd[3] = {0x01, 0, 0};
    memset(rx, 0, sizeof rx);
    x[0].tx_buf = (uint64_t)(uintptr_t)rd;
    x[0].rx_buf = (uint64_t)(uintptr_t)rx;
    x[0].len = 3;
    CHECK(ec_sys.ioctl(fd, MSG1, x) == 3);
    CHECK(rx[1] == 0x03 && rx[2] == 0xFF); /* CR1, MASK power-on values */
    CHECK(ec_sys.close(fd) == 0);
    CHECK(fk_open_fd_count() == 0);
    fk_uninstall();
}

int main(void)
{
    RUN(test_max31855_datasheet_values);
    RUN(test_max31855_fault_bits);
    RUN(test_max31856_values);
    RUN(test_max31856_fault_bits);
    RUN(test_max31856_config_bytes);
    RUN(test_max31856_open_writes_config);
    RUN(test_max31856_spi_setup_and_read);
    RUN(test_max31856_poll_caching);
    RUN(test_max31856_settle_after_open);
    RUN(test_max31856_reset_is_detected_and_repaired);
    RUN(test_spi_read_failure);
    RUN(test_max31855_through_fake);
    RUN(test_param_errors);
    RUN(test_open_failures);
    RUN(test_close_and_ops);
    RUN(test_fake_spidev_validates);
    CTEST_END();
}
