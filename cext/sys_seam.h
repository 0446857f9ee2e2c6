/*
 * sys_seam.h - the system calls the hardware drivers make, behind function pointers.
 *
 * Production code calls the real open/ioctl/close. The C tests point these at a fake
 * kernel (cext/tests/support_fake_kernel.c) that checks each request the way the GPIO and SPI
 * subsystems would and answers with synthesised line values and converter frames.
 * This is the seam that lets the gpiochip and spidev drivers be tested without
 * hardware; what it cannot prove (timing on the wire, real chip quirks) needs a bench.
 */
#ifndef EC_SYS_SEAM_H
#define EC_SYS_SEAM_H

typedef struct ec_sys_ops {
    int (*open)(const char *path, int flags);
    int (*ioctl)(int fd, unsigned long request, void *arg);
    int (*close)(int fd);
} ec_sys_ops;

/* the ops in force; defaults to the real system calls */
extern ec_sys_ops ec_sys;

#endif
