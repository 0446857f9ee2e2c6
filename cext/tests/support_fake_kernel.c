/* support_fake_kernel.c - the fake kernel behind the system-call seam (see fake_kernel.h). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "fake_kernel.h"
#include "sys_seam.h"

fk_kernel fk_state;

static pthread_mutex_t fk_lock = PTHREAD_MUTEX_INITIALIZER;
static ec_sys_ops fk_saved;
static int fk_installed;

/* ------------------------------------------------------------------ helpers */

static fk_fd *fk_slot(int fd)
{
    int i = fd - FK_FD_BASE;
    if (i < 0 || i >= FK_MAX_FDS || fk_state.fds[i].kind == FK_FD_FREE) {
        return NULL;
    }
    return &fk_state.fds[i];
}

static int fk_alloc_fd(int kind, int flags)
{
    for (int i = 0; i < FK_MAX_FDS; i++) {
        if (fk_state.fds[i].kind == FK_FD_FREE) {
            memset(&fk_state.fds[i], 0, sizeof fk_state.fds[i]);
            fk_state.fds[i].kind = kind;
            fk_state.fds[i].flags = flags;
            return FK_FD_BASE + i;
        }
    }
    return -1;
}

static int fk_err(int e)
{
    errno = e;
    return -1;
}

/* injected failure for this call? */
static int fk_inject(int op, unsigned long request)
{
    if (fk_state.fail_count == 0 || fk_state.fail_op != op) {
        return 0;
    }
    if (op == FK_OP_IOCTL && fk_state.fail_request != 0 && fk_state.fail_request != request) {
        return 0;
    }
    if (fk_state.fail_count > 0) {
        fk_state.fail_count--;
    }
    fk_state.n_failed++;
    return 1;
}

static void fk_reset_locked(void)
{
    memset(&fk_state, 0, sizeof fk_state);
    fk_state.gpio_present = 1;
    fk_state.gpio_n_lines = 32;
    strcpy(fk_state.gpio_label, "fk-gpio");
    fk_state.spi_present = 1;
    fk_state.spi_chip = FK_SPI_NONE;
    fk_state.spi_miso_idle = 0xFF;
    fk_state.spi_bits = 8;
    fk_state.spi_max_speed_hz = 500000;
}

/* ------------------------------------------------------------------ GPIO */

#define FK_VALID_FLAGS                                                                       \
    (GPIO_V2_LINE_FLAG_ACTIVE_LOW | GPIO_V2_LINE_FLAG_INPUT | GPIO_V2_LINE_FLAG_OUTPUT |       \
     GPIO_V2_LINE_FLAG_EDGE_RISING | GPIO_V2_LINE_FLAG_EDGE_FALLING |                         \
     GPIO_V2_LINE_FLAG_OPEN_DRAIN | GPIO_V2_LINE_FLAG_OPEN_SOURCE |                           \
     GPIO_V2_LINE_FLAG_BIAS_PULL_UP | GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN |                      \
     GPIO_V2_LINE_FLAG_BIAS_DISABLED | GPIO_V2_LINE_FLAG_EVENT_CLOCK_REALTIME)
#define FK_BIAS_FLAGS                                                                        \
    (GPIO_V2_LINE_FLAG_BIAS_PULL_UP | GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN |                      \
     GPIO_V2_LINE_FLAG_BIAS_DISABLED)
#define FK_DRIVE_FLAGS (GPIO_V2_LINE_FLAG_OPEN_DRAIN | GPIO_V2_LINE_FLAG_OPEN_SOURCE)
#define FK_DIR_FLAGS (GPIO_V2_LINE_FLAG_INPUT | GPIO_V2_LINE_FLAG_OUTPUT)
#define FK_EDGE_FLAGS (GPIO_V2_LINE_FLAG_EDGE_RISING | GPIO_V2_LINE_FLAG_EDGE_FALLING)

/* gpio_v2_line_flags_validate() */
static int fk_flags_ok(uint64_t f)
{
    if (f & ~(uint64_t)FK_VALID_FLAGS) {
        return 0;
    }
    if ((f & GPIO_V2_LINE_FLAG_INPUT) && (f & GPIO_V2_LINE_FLAG_OUTPUT)) {
        return 0;
    }
    if ((f & FK_EDGE_FLAGS) && !(f & GPIO_V2_LINE_FLAG_INPUT)) {
        return 0;
    }
    if ((f & GPIO_V2_LINE_FLAG_OPEN_DRAIN) && (f & GPIO_V2_LINE_FLAG_OPEN_SOURCE)) {
        return 0;
    }
    if ((f & FK_DRIVE_FLAGS) && !(f & GPIO_V2_LINE_FLAG_OUTPUT)) {
        return 0;
    }
    if ((f & FK_BIAS_FLAGS) && !(f & FK_DIR_FLAGS)) {
        return 0;
    }
    uint64_t b = f & FK_BIAS_FLAGS;
    if (b & (b - 1)) { /* more than one bias flag */
        return 0;
    }
    return 1;
}

/* the flags and output value line index i gets: first matching attribute wins */
static uint64_t fk_line_flags(const struct gpio_v2_line_config *c, uint32_t i)
{
    for (uint32_t a = 0; a < c->num_attrs; a++) {
        if (c->attrs[a].attr.id == GPIO_V2_LINE_ATTR_ID_FLAGS && (c->attrs[a].mask >> i & 1u)) {
            return c->attrs[a].attr.flags;
        }
    }
    return c->flags;
}

static int fk_line_output_value(const struct gpio_v2_line_config *c, uint32_t i)
{
    for (uint32_t a = 0; a < c->num_attrs; a++) {
        if (c->attrs[a].attr.id == GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES && (c->attrs[a].mask >> i & 1u)) {
            return (int)(c->attrs[a].attr.values >> i & 1u);
        }
    }
    return 0;
}

static int fk_gpio_get_line(struct gpio_v2_line_request *r)
{
    if (r->num_lines == 0 || r->num_lines > GPIO_V2_LINES_MAX) {
        return fk_err(EINVAL);
    }
    for (size_t i = 0; i < sizeof r->padding / sizeof r->padding[0]; i++) {
        if (r->padding[i] != 0) {
            return fk_err(EINVAL);
        }
    }
    const struct gpio_v2_line_config *c = &r->config;
    if (c->num_attrs > GPIO_V2_LINE_NUM_ATTRS_MAX) {
        return fk_err(EINVAL);
    }
    for (size_t i = 0; i < sizeof c->padding / sizeof c->padding[0]; i++) {
        if (c->padding[i] != 0) {
            return fk_err(EINVAL);
        }
    }
    if (!fk_flags_ok(c->flags)) {
        return fk_err(EINVAL);
    }
    for (uint32_t a = 0; a < c->num_attrs; a++) {
        uint32_t id = c->attrs[a].attr.id;
        if (c->attrs[a].attr.padding != 0 || id < GPIO_V2_LINE_ATTR_ID_FLAGS ||
            id > GPIO_V2_LINE_ATTR_ID_DEBOUNCE) {
            return fk_err(EINVAL);
        }
        if (id == GPIO_V2_LINE_ATTR_ID_FLAGS && !fk_flags_ok(c->attrs[a].attr.flags)) {
            return fk_err(EINVAL);
        }
    }
    if (memchr(r->consumer, '\0', sizeof r->consumer) == NULL || r->consumer[0] == '\0') {
        return fk_err(EINVAL);
    }
    for (uint32_t i = 0; i < r->num_lines; i++) {
        uint32_t off = r->offsets[i];
        if (off >= fk_state.gpio_n_lines || off >= FK_GPIO_CHIP_MAX) {
            return fk_err(EINVAL);
        }
    }
    for (uint32_t i = 0; i < r->num_lines; i++) {
        uint32_t off = r->offsets[i];
        for (uint32_t j = 0; j < i; j++) {
            if (r->offsets[j] == off) {
                return fk_err(EBUSY);
            }
        }
        if (fk_state.line[off].requested || fk_state.line[off].foreign[0] != '\0') {
            return fk_err(EBUSY);
        }
    }
    int fd = fk_alloc_fd(FK_FD_LINEREQ, 0);
    if (fd < 0) {
        return fk_err(EMFILE);
    }
    fk_fd *s = fk_slot(fd);
    s->num_lines = r->num_lines;
    memcpy(s->offsets, r->offsets, sizeof s->offsets);
    memcpy(s->consumer, r->consumer, sizeof s->consumer);
    for (uint32_t i = 0; i < r->num_lines; i++) {
        fk_gpio_line *l = &fk_state.line[r->offsets[i]];
        l->requested = 1;
        l->req_fd = fd;
        l->flags = fk_line_flags(c, i);
        if (l->flags & GPIO_V2_LINE_FLAG_OUTPUT) {
            int active_low = (l->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW) != 0;
            l->output_level = (uint8_t)(fk_line_output_value(c, i) ^ active_low);
        }
    }
    r->fd = fd;
    fk_state.last_request = *r;
    fk_state.n_line_requests++;
    return 0;
}

static int fk_gpio_chip_ioctl(unsigned long request, void *arg)
{
    if (request == GPIO_GET_CHIPINFO_IOCTL) {
        struct gpiochip_info *info = arg;
        memset(info, 0, sizeof *info);
        strcpy(info->name, "gpiochip0");
        memcpy(info->label, fk_state.gpio_label, sizeof info->label);
        info->lines = fk_state.gpio_n_lines;
        return 0;
    }
    if (request == GPIO_V2_GET_LINEINFO_IOCTL) {
        struct gpio_v2_line_info *info = arg;
        uint32_t off = info->offset;
        for (size_t i = 0; i < sizeof info->padding / sizeof info->padding[0]; i++) {
            if (info->padding[i] != 0) {
                return fk_err(EINVAL);
            }
        }
        if (off >= fk_state.gpio_n_lines || off >= FK_GPIO_CHIP_MAX) {
            return fk_err(EINVAL);
        }
        const fk_gpio_line *l = &fk_state.line[off];
        memset(info, 0, sizeof *info);
        info->offset = off;
        if (l->foreign[0] != '\0') {
            info->flags = GPIO_V2_LINE_FLAG_USED;
            memcpy(info->consumer, l->foreign, sizeof info->consumer);
        } else if (l->requested) {
            info->flags = GPIO_V2_LINE_FLAG_USED | l->flags;
            const fk_fd *s = fk_slot(l->req_fd);
            if (s != NULL) {
                memcpy(info->consumer, s->consumer, sizeof info->consumer);
            }
        } else {
            info->flags = GPIO_V2_LINE_FLAG_INPUT;
        }
        return 0;
    }
    if (request == GPIO_V2_GET_LINE_IOCTL) {
        return fk_gpio_get_line(arg);
    }
    return fk_err(EINVAL);
}

static int fk_gpio_req_ioctl(fk_fd *s, unsigned long request, void *arg)
{
    struct gpio_v2_line_values *lv = arg;
    if (request != GPIO_V2_LINE_GET_VALUES_IOCTL && request != GPIO_V2_LINE_SET_VALUES_IOCTL) {
        return fk_err(EINVAL);
    }
    uint64_t in_range = s->num_lines >= 64 ? ~0ULL : ((1ULL << s->num_lines) - 1ULL);
    uint64_t mask = lv->mask & in_range;
    if (mask == 0) {
        return fk_err(EINVAL);
    }
    if (request == GPIO_V2_LINE_GET_VALUES_IOCTL) {
        uint64_t bits = 0;
        for (uint32_t i = 0; i < s->num_lines; i++) {
            if (mask >> i & 1u) {
                const fk_gpio_line *l = &fk_state.line[s->offsets[i]];
                int active_low = (l->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW) != 0;
                int phys = (l->flags & GPIO_V2_LINE_FLAG_OUTPUT) ? l->output_level : l->input_level;
                if ((phys ^ active_low) & 1) {
                    bits |= 1ULL << i;
                }
            }
        }
        lv->bits = bits;
        fk_state.n_get_values++;
        return 0;
    }
    for (uint32_t i = 0; i < s->num_lines; i++) {
        if ((mask >> i & 1u) && !(fk_state.line[s->offsets[i]].flags & GPIO_V2_LINE_FLAG_OUTPUT)) {
            return fk_err(EPERM);
        }
    }
    for (uint32_t i = 0; i < s->num_lines; i++) {
        if (mask >> i & 1u) {
            fk_gpio_line *l = &fk_state.line[s->offsets[i]];
            int active_low = (l->flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW) != 0;
            l->output_level = (uint8_t)(((lv->bits >> i) & 1u) ^ (unsigned)active_low);
        }
    }
    fk_state.last_set_mask = lv->mask;
    fk_state.last_set_bits = lv->bits;
    fk_state.n_set_values++;
    return 0;
}

/* ------------------------------------------------------------------ SPI */

typedef struct fk_frame {
    uint32_t pos;     /* byte index within the CS-low frame */
    uint8_t addr;     /* MAX31856 address byte */
    uint8_t carry;    /* wrong clock phase: the bit that slips into the next byte */
    int phase_ok;
    int too_fast;
} fk_frame;

static uint8_t fk_chip_byte(fk_frame *f, uint8_t tx)
{
    uint8_t out;
    uint32_t pos = f->pos++;
    switch (fk_state.spi_chip) {
    case FK_SPI_MAX31855:
        out = pos < 4 ? (uint8_t)(fk_state.max31855_frame >> (24 - 8 * pos)) : 0;
        break;
    case FK_SPI_MAX31856:
        if (pos == 0) {
            f->addr = tx;
            out = 0xFF; /* SDO high impedance during the address byte */
        } else {
            uint32_t a = (f->addr & 0x7Fu);
            uint32_t reg = (a + pos - 1) & 0x0Fu;
            if (a > 0x0F) {
                out = 0xFF; /* invalid address */
            } else if (f->addr & 0x80) {
                if (reg <= 0x0B) {
                    fk_state.max31856_regs[reg] = tx;
                }
                if (fk_state.n_reg_writes < FK_SPI_LOG) {
                    fk_state.reg_writes[fk_state.n_reg_writes].reg = (uint8_t)reg;
                    fk_state.reg_writes[fk_state.n_reg_writes].value = tx;
                    fk_state.n_reg_writes++;
                }
                out = 0xFF;
            } else {
                out = fk_state.max31856_regs[reg];
            }
        }
        break;
    default:
        out = fk_state.spi_miso_idle;
        break;
    }
    if (fk_state.spi_chip != FK_SPI_NONE) {
        if (f->too_fast) {
            out = 0xFF;
        } else if (!f->phase_ok) {
            uint8_t shifted = (uint8_t)((out >> 1) | (f->carry << 7));
            f->carry = out & 1u;
            out = shifted;
        }
    }
    return out;
}

static int fk_spi_message(unsigned long request, void *arg)
{
    size_t size = _IOC_SIZE(request);
    if (size == 0 || size % sizeof(struct spi_ioc_transfer) != 0) {
        return fk_err(ENOTTY);
    }
    size_t n = size / sizeof(struct spi_ioc_transfer);
    struct spi_ioc_transfer *x = arg;
    for (size_t k = 0; k < n; k++) {
        if (x[k].len == 0 || x[k].len > 4096) {
            return fk_err(EMSGSIZE);
        }
        if ((x[k].bits_per_word != 0 && x[k].bits_per_word != 8) || x[k].tx_nbits > 1 ||
            x[k].rx_nbits > 1 || x[k].pad != 0) {
            return fk_err(EINVAL);
        }
    }
    int cpha = fk_state.spi_mode & SPI_CPHA;
    fk_frame f;
    memset(&f, 0, sizeof f);
    f.phase_ok = fk_state.spi_chip == FK_SPI_MAX31856 ? cpha != 0 : cpha == 0;
    uint32_t total = 0;
    for (size_t k = 0; k < n; k++) {
        const uint8_t *tx = (const uint8_t *)(uintptr_t)x[k].tx_buf;
        uint8_t *rx = (uint8_t *)(uintptr_t)x[k].rx_buf;
        uint32_t speed = x[k].speed_hz;
        if (speed == 0 || speed > fk_state.spi_max_speed_hz) {
            speed = fk_state.spi_max_speed_hz;
        }
        f.too_fast = speed > 5000000u;
        fk_state.last_speed_hz = speed;
        for (uint32_t i = 0; i < x[k].len; i++) {
            uint8_t t = tx ? tx[i] : 0;
            if (total + i < FK_SPI_LOG) {
                fk_state.last_tx[total + i] = t;
            }
            uint8_t r = fk_chip_byte(&f, t);
            if (rx) {
                rx[i] = r;
            }
        }
        total += x[k].len;
        if (x[k].cs_change && k + 1 < n) {
            memset(&f, 0, sizeof f);
            f.phase_ok = fk_state.spi_chip == FK_SPI_MAX31856 ? cpha != 0 : cpha == 0;
        }
    }
    fk_state.last_len = total;
    fk_state.n_spi_messages++;
    return (int)total;
}

static int fk_spi_ioctl(unsigned long request, void *arg)
{
    if (_IOC_TYPE(request) != SPI_IOC_MAGIC) {
        return fk_err(ENOTTY);
    }
    if (request == SPI_IOC_WR_MODE) {
        uint8_t m = *(const uint8_t *)arg;
        if (m & ~(uint8_t)SPI_MODE_X_MASK) {
            return fk_err(EINVAL);
        }
        fk_state.spi_mode = m;
        fk_state.n_spi_mode_sets++;
        return 0;
    }
    if (request == SPI_IOC_RD_MODE) {
        *(uint8_t *)arg = fk_state.spi_mode;
        return 0;
    }
    if (request == SPI_IOC_WR_BITS_PER_WORD) {
        uint8_t b = *(const uint8_t *)arg;
        if (b != 0 && b != 8) {
            return fk_err(EINVAL);
        }
        fk_state.spi_bits = 8;
        fk_state.n_spi_bits_sets++;
        return 0;
    }
    if (request == SPI_IOC_RD_BITS_PER_WORD) {
        *(uint8_t *)arg = fk_state.spi_bits;
        return 0;
    }
    if (request == SPI_IOC_WR_MAX_SPEED_HZ) {
        uint32_t hz;
        memcpy(&hz, arg, sizeof hz);
        if (hz == 0) {
            return fk_err(EINVAL);
        }
        fk_state.spi_max_speed_hz = hz;
        fk_state.n_spi_speed_sets++;
        return 0;
    }
    if (request == SPI_IOC_RD_MAX_SPEED_HZ) {
        memcpy(arg, &fk_state.spi_max_speed_hz, sizeof fk_state.spi_max_speed_hz);
        return 0;
    }
    if (_IOC_NR(request) == 0 && _IOC_DIR(request) == _IOC_WRITE) {
        return fk_spi_message(request, arg);
    }
    return fk_err(ENOTTY);
}

/* ------------------------------------------------------------------ the seam */

static int fk_open(const char *path, int flags)
{
    pthread_mutex_lock(&fk_lock);
    int r;
    if (fk_inject(FK_OP_OPEN, 0)) {
        r = fk_err(fk_state.fail_errno);
    } else if (path == NULL) {
        r = fk_err(EFAULT);
    } else {
        int kind = FK_FD_FREE;
        if (strcmp(path, FK_GPIO_PATH) == 0 && fk_state.gpio_present) {
            kind = FK_FD_GPIOCHIP;
        } else if (strcmp(path, FK_SPI_PATH) == 0 && fk_state.spi_present) {
            kind = FK_FD_SPI;
        }
        if (kind == FK_FD_FREE) {
            r = fk_err(ENOENT);
        } else {
            r = fk_alloc_fd(kind, flags);
            if (r < 0) {
                r = fk_err(EMFILE);
            } else {
                fk_state.n_opens++;
                fk_state.last_open_flags = flags;
                strncpy(fk_state.last_open_path, path, sizeof fk_state.last_open_path - 1);
            }
        }
    }
    pthread_mutex_unlock(&fk_lock);
    return r;
}

static int fk_ioctl(int fd, unsigned long request, void *arg)
{
    pthread_mutex_lock(&fk_lock);
    int r;
    fk_fd *s = fk_slot(fd);
    if (fk_inject(FK_OP_IOCTL, request)) {
        r = fk_err(fk_state.fail_errno);
    } else if (s == NULL) {
        r = fk_err(EBADF);
    } else if (arg == NULL) {
        r = fk_err(EFAULT);
    } else if (s->kind == FK_FD_GPIOCHIP) {
        r = fk_gpio_chip_ioctl(request, arg);
    } else if (s->kind == FK_FD_LINEREQ) {
        r = fk_gpio_req_ioctl(s, request, arg);
    } else {
        r = fk_spi_ioctl(request, arg);
    }
    pthread_mutex_unlock(&fk_lock);
    return r;
}

static int fk_close(int fd)
{
    pthread_mutex_lock(&fk_lock);
    int r = 0;
    fk_fd *s = fk_slot(fd);
    if (s == NULL) {
        r = fk_err(EBADF);
    } else {
        if (s->kind == FK_FD_LINEREQ) {
            for (uint32_t i = 0; i < s->num_lines; i++) {
                fk_gpio_line *l = &fk_state.line[s->offsets[i]];
                if (l->req_fd == fd) {
                    l->requested = 0;
                    l->req_fd = 0;
                    l->flags = 0; /* output_level stays: most controllers keep driving it */
                }
            }
        }
        memset(s, 0, sizeof *s);
        fk_state.n_closes++;
        if (fk_inject(FK_OP_CLOSE, 0)) {
            r = fk_err(fk_state.fail_errno); /* Linux releases the fd even then */
        }
    }
    pthread_mutex_unlock(&fk_lock);
    return r;
}

/* ------------------------------------------------------------------ test API */

void fk_reset(void)
{
    pthread_mutex_lock(&fk_lock);
    fk_reset_locked();
    pthread_mutex_unlock(&fk_lock);
}

void fk_install(void)
{
    pthread_mutex_lock(&fk_lock);
    fk_reset_locked();
    if (!fk_installed) {
        fk_saved = ec_sys;
        fk_installed = 1;
    }
    ec_sys.open = fk_open;
    ec_sys.ioctl = fk_ioctl;
    ec_sys.close = fk_close;
    pthread_mutex_unlock(&fk_lock);
}

void fk_uninstall(void)
{
    pthread_mutex_lock(&fk_lock);
    if (fk_installed) {
        ec_sys = fk_saved;
        fk_installed = 0;
    }
    pthread_mutex_unlock(&fk_lock);
}

int fk_open_fd_count(void)
{
    pthread_mutex_lock(&fk_lock);
    int n = 0;
    for (int i = 0; i < FK_MAX_FDS; i++) {
        n += fk_state.fds[i].kind != FK_FD_FREE;
    }
    pthread_mutex_unlock(&fk_lock);
    return n;
}

int fk_fd_kind(int fd)
{
    pthread_mutex_lock(&fk_lock);
    fk_fd *s = fk_slot(fd);
    int k = s ? s->kind : FK_FD_FREE;
    pthread_mutex_unlock(&fk_lock);
    return k;
}

void fk_fail(int op, unsigned long request, int err, int count)
{
    pthread_mutex_lock(&fk_lock);
    fk_state.fail_op = op;
    fk_state.fail_request = request;
    fk_state.fail_errno = err;
    fk_state.fail_count = count;
    pthread_mutex_unlock(&fk_lock);
}

void fk_fail_clear(void)
{
    fk_fail(0, 0, 0, 0);
}

void fk_gpio_set_input(uint32_t line, int level)
{
    pthread_mutex_lock(&fk_lock);
    if (line < FK_GPIO_CHIP_MAX) {
        fk_state.line[line].input_level = (uint8_t)(level != 0);
    }
    pthread_mutex_unlock(&fk_lock);
}

int fk_gpio_output(uint32_t line)
{
    pthread_mutex_lock(&fk_lock);
    int v = line < FK_GPIO_CHIP_MAX ? fk_state.line[line].output_level : -1;
    pthread_mutex_unlock(&fk_lock);
    return v;
}

void fk_gpio_set_foreign(uint32_t line, const char *consumer)
{
    pthread_mutex_lock(&fk_lock);
    if (line < FK_GPIO_CHIP_MAX) {
        memset(fk_state.line[line].foreign, 0, sizeof fk_state.line[line].foreign);
        if (consumer != NULL) {
            strncpy(fk_state.line[line].foreign, consumer, GPIO_MAX_NAME_SIZE - 1);
        }
    }
    pthread_mutex_unlock(&fk_lock);
}

static void fk_max31856_por_locked(void)
{
    static const uint8_t por[16] = {0x00, 0x03, 0xFF, 0x7F, 0xC0, 0x7F, 0xFF, 0x80,
                                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    memcpy(fk_state.max31856_regs, por, sizeof por);
}

void fk_spi_set_chip(int chip)
{
    pthread_mutex_lock(&fk_lock);
    fk_state.spi_chip = chip;
    if (chip == FK_SPI_MAX31856) {
        fk_max31856_por_locked();
    }
    pthread_mutex_unlock(&fk_lock);
}

void fk_max31855_set_frame(uint32_t frame)
{
    pthread_mutex_lock(&fk_lock);
    fk_state.max31855_frame = frame;
    pthread_mutex_unlock(&fk_lock);
}

/* two's complement of v in `bits` bits */
static uint32_t fk_twos(long v, unsigned bits)
{
    uint32_t m = (1u << bits) - 1u;
    return (uint32_t)v & m;
}

uint32_t fk_max31855_encode(double tc_c, double cj_c, uint32_t low_bits)
{
    uint32_t tc = fk_twos(lround(tc_c * 4.0), 14);
    uint32_t cj = fk_twos(lround(cj_c * 16.0), 12);
    return (tc << 18) | (cj << 4) | (low_bits & 0x00010007u);
}

void fk_max31856_power_on_reset(void)
{
    pthread_mutex_lock(&fk_lock);
    fk_max31856_por_locked();
    pthread_mutex_unlock(&fk_lock);
}

void fk_max31856_set(double tc_c, double cj_c, uint8_t sr)
{
    uint32_t cj = fk_twos(lround(cj_c * 64.0), 14) << 2;
    uint32_t tc = fk_twos(lround(tc_c * 128.0), 19) << 5;
    pthread_mutex_lock(&fk_lock);
    fk_state.max31856_regs[0x0A] = (uint8_t)(cj >> 8);
    fk_state.max31856_regs[0x0B] = (uint8_t)cj;
    fk_state.max31856_regs[0x0C] = (uint8_t)(tc >> 16);
    fk_state.max31856_regs[0x0D] = (uint8_t)(tc >> 8);
    fk_state.max31856_regs[0x0E] = (uint8_t)tc;
    fk_state.max31856_regs[0x0F] = sr;
    pthread_mutex_unlock(&fk_lock);
}

int fk_max31856_last_write(uint8_t reg)
{
    pthread_mutex_lock(&fk_lock);
    int v = -1;
    for (int i = 0; i < fk_state.n_reg_writes; i++) {
        if (fk_state.reg_writes[i].reg == reg) {
            v = fk_state.reg_writes[i].value;
        }
    }
    pthread_mutex_unlock(&fk_lock);
    return v;
}
