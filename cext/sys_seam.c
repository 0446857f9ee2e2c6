/* sys_seam.c - the real system calls behind ec_sys (see sys_seam.h). */
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "sys_seam.h"

static int real_open(const char *path, int flags) { return open(path, flags); }
static int real_ioctl(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
static int real_close(int fd) { return close(fd); }

ec_sys_ops ec_sys = {real_open, real_ioctl, real_close};
