/*
 * fake_kernel.h - a fake Linux kernel behind the system-call seam (sys_seam.h), so the
 * gpiochip and spidev drivers can be tested without hardware.
 *
 * fk_install() resets the fake and points ec_sys at fk's open/ioctl/close;
 * fk_uninstall() puts back the ec_sys that was in force. Nothing changes ec_sys until a
 * test calls fk_install(), so linking this file into every C test is harmless.
 *
 * The fake pretends two devices exist:
 *   FK_GPIO_PATH (/dev/gpiochip0): a GPIO chip with fk_state.gpio_n_lines lines (32 by
 *     default). It answers GPIO_GET_CHIPINFO_IOCTL, GPIO_V2_GET_LINEINFO_IOCTL and
 *     GPIO_V2_GET_LINE_IOCTL on the chip fd, and GPIO_V2_LINE_GET_VALUES_IOCTL /
 *     GPIO_V2_LINE_SET_VALUES_IOCTL on the line request fd it hands out. It checks a
 *     line request the way gpiolib-cdev does: num_lines 1..64, zero padding, at most 10
 *     attributes with known ids, every flags word valid (no unknown or USED flag, not
 *     input and output, drive flags only on outputs, bias only with a direction and one
 *     at most, edges only on inputs), offsets within the chip (EINVAL), a line twice in
 *     the request or already held (EBUSY). Stricter than the kernel: the consumer must
 *     be a non-empty NUL-terminated string (EINVAL). Values are logical: GET returns
 *     physical input level XOR active-low, SET drives physical = bit XOR active-low
 *     (EPERM for an input line, EINVAL for an empty mask), as the kernel does.
 *   FK_SPI_PATH (/dev/spidev0.0): spidev with SPI_IOC_{RD,WR}_{MODE,BITS_PER_WORD,
 *     MAX_SPEED_HZ} and SPI_IOC_MESSAGE(n) (size a multiple of the transfer struct, else
 *     ENOTTY; len 1..4096 else EMSGSIZE; bits_per_word 0 or 8, tx/rx_nbits 0 or 1 and pad
 *     zero, else EINVAL; returns the bytes transferred, like the kernel). Mode writes
 *     outside modes 0..3 and a zero max speed are EINVAL. Behind it sits the converter
 *     chosen in fk_state.spi_chip: a MAX31855 shifting out fk_state.max31855_frame, a
 *     MAX31856 with a 16-register file (address byte, A7 = write, auto-increment;
 *     0x0C..0x0F read-only) that logs every register write, or nothing (MISO reads
 *     fk_state.spi_miso_idle). Like the chips, it returns bits shifted by one when the
 *     SPI mode's clock phase is wrong for the chip (MAX31855 CPHA = 0, MAX31856 CPHA = 1)
 *     and 0xFF bytes above 5 MHz.
 *
 * Any other path is ENOENT; a closed or unknown fd EBADF; an unknown ioctl EINVAL on
 * GPIO fds and ENOTTY on spidev, as in the kernel. Fds are numbered from FK_FD_BASE and
 * tracked, so a test can assert that everything was closed. fk_fail() makes the next
 * call(s) of an operation fail with a given errno (close still releases the fd, as
 * Linux does).
 *
 * The calls through the seam and the fk_* helpers take a mutex, so a test may drive
 * inputs while a sampler thread reads; reading fk_state fields directly is for when
 * no other thread is using the fake.
 */
#ifndef FAKE_KERNEL_H
#define FAKE_KERNEL_H

#include <linux/gpio.h>
#include <linux/spi/spidev.h>
#include <stddef.h>
#include <stdint.h>

#define FK_GPIO_PATH "/dev/gpiochip0"
#define FK_SPI_PATH "/dev/spidev0.0"
#define FK_FD_BASE 1000
#define FK_MAX_FDS 32
#define FK_GPIO_CHIP_MAX 128
#define FK_SPI_LOG 64

enum { FK_OP_OPEN = 1, FK_OP_IOCTL = 2, FK_OP_CLOSE = 3 };
enum { FK_FD_FREE = 0, FK_FD_GPIOCHIP, FK_FD_LINEREQ, FK_FD_SPI };
enum { FK_SPI_NONE = 0, FK_SPI_MAX31855, FK_SPI_MAX31856 };

typedef struct fk_fd {
    int kind;                       /* FK_FD_* */
    int flags;                      /* open() flags */
    uint32_t num_lines;             /* FK_FD_LINEREQ: the lines it holds */
    uint32_t offsets[GPIO_V2_LINES_MAX];
    char consumer[GPIO_MAX_NAME_SIZE];
} fk_fd;

typedef struct fk_gpio_line {
    uint8_t input_level;            /* physical level the outside world puts on the line */
    uint8_t output_level;           /* physical level the line drives (last set) */
    int requested;                  /* held by a line request of this process */
    int req_fd;
    uint64_t flags;                 /* effective GPIO_V2_LINE_FLAG_* of that request */
    char foreign[GPIO_MAX_NAME_SIZE]; /* non-empty: held by another consumer */
} fk_gpio_line;

typedef struct fk_reg_write {
    uint8_t reg;
    uint8_t value;
} fk_reg_write;

typedef struct fk_kernel {
    /* ---- GPIO chip ---- */
    int gpio_present;
    uint32_t gpio_n_lines;
    char gpio_label[GPIO_MAX_NAME_SIZE];
    fk_gpio_line line[FK_GPIO_CHIP_MAX];
    struct gpio_v2_line_request last_request; /* as received (fd filled in on success) */
    int n_line_requests;                      /* successful GPIO_V2_GET_LINE_IOCTL */
    int n_get_values, n_set_values;
    uint64_t last_set_mask, last_set_bits;    /* request index space, as received */

    /* ---- spidev ---- */
    int spi_present;
    int spi_chip;                  /* FK_SPI_* */
    uint8_t spi_miso_idle;         /* what MISO reads with no chip */
    uint8_t spi_mode;
    uint8_t spi_bits;
    uint32_t spi_max_speed_hz;
    int n_spi_mode_sets, n_spi_bits_sets, n_spi_speed_sets;
    int n_spi_messages;            /* SPI_IOC_MESSAGE calls that succeeded */
    uint32_t last_len;             /* bytes in the last message */
    uint32_t last_speed_hz;        /* effective clock of its last transfer */
    uint8_t last_tx[FK_SPI_LOG];   /* its first bytes sent */
    uint32_t max31855_frame;
    uint8_t max31856_regs[16];
    fk_reg_write reg_writes[FK_SPI_LOG];
    int n_reg_writes;

    /* ---- fds ---- */
    fk_fd fds[FK_MAX_FDS];
    int n_opens, n_closes;
    int last_open_flags;
    char last_open_path[256];

    /* ---- failure injection ---- */
    int fail_op;
    unsigned long fail_request;    /* 0 = any ioctl */
    int fail_errno;
    int fail_count;                /* calls left to fail; -1 = until fk_fail_clear() */
    int n_failed;                  /* calls failed by injection */
} fk_kernel;

extern fk_kernel fk_state;

void fk_install(void);
void fk_uninstall(void);
void fk_reset(void);

int fk_open_fd_count(void);
int fk_fd_kind(int fd);

/* the next `count` calls of op (FK_OP_*; for ioctls only `request`, or any when 0) fail
 * with errno `err`; count -1 = until fk_fail_clear() */
void fk_fail(int op, unsigned long request, int err, int count);
void fk_fail_clear(void);

void fk_gpio_set_input(uint32_t line, int level);      /* physical level */
int fk_gpio_output(uint32_t line);                     /* physical level driven */
void fk_gpio_set_foreign(uint32_t line, const char *consumer);

void fk_spi_set_chip(int chip);                        /* FK_SPI_*; MAX31856 gets its power-on registers */
void fk_max31855_set_frame(uint32_t frame);
uint32_t fk_max31855_encode(double tc_c, double cj_c, uint32_t low_bits); /* low_bits: D16, D2..D0 */
void fk_max31856_power_on_reset(void);                 /* registers to their power-on values */
void fk_max31856_set(double tc_c, double cj_c, uint8_t sr); /* data registers 0x0A..0x0F */
int fk_max31856_last_write(uint8_t reg);               /* last value written to reg, -1 none */

#endif
