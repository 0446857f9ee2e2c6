/*
 * drv_sim.c - the `sim` driver: the shared register file of the virtual rig.
 *
 * Params: `path=/dev/shm/reedge-hd-01.regs` (created by the plant or ec_sim_create()).
 * Inputs: ai[0..63] (ai_fault nonzero -> EC_ST_FAULT), di[0..63]. Outputs: do_level[0..63].
 *
 * Clock: SIM_CLOCK_WALL -> CLOCK_MONOTONIC; SIM_CLOCK_PLANT -> the plant's plant_ns, so a
 * plant running faster than real time is seen at its own pace by debounce, rates and
 * dead-man. If the plant clock stops advancing for PLANT_SILENT_NS of wall time while in
 * plant mode, every input is marked STALE: the I/O is gone, exactly as a cut field bus.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "driver.h"
#include "edge_core.h"
#include "sim_regs.h"

#define PLANT_SILENT_NS 500000000LL

typedef struct sim_priv {
    volatile sim_regs *regs;
    int64_t last_plant_ns;
    int64_t last_plant_change_wall;
    int64_t last_write_clock; /* core clock of the previous write: on-time accumulates from there */
} sim_priv;

static int map_regs(const char *path, int create, volatile sim_regs **out, char *err, size_t errlen)
{
    int fd = open(path, create ? (O_RDWR | O_CREAT | O_TRUNC) : O_RDWR, 0644);
    if (fd < 0) {
        ec_set_err(err, errlen, "sim: cannot open register file '%s': %s", path, strerror(errno));
        return EC_EIO;
    }
    if (create && ftruncate(fd, (off_t)sizeof(sim_regs)) != 0) {
        ec_set_err(err, errlen, "sim: cannot size register file '%s': %s", path, strerror(errno));
        close(fd);
        return EC_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(sim_regs)) {
        ec_set_err(err, errlen, "sim: register file '%s' is %lld bytes, expected %zu", path,
                   (long long)st.st_size, sizeof(sim_regs));
        close(fd);
        return EC_EINVAL;
    }
    void *p = mmap(NULL, sizeof(sim_regs), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        ec_set_err(err, errlen, "sim: cannot map '%s': %s", path, strerror(errno));
        return EC_EIO;
    }
    *out = (volatile sim_regs *)p;
    return EC_OK;
}

int ec_sim_create(const char *path, char *err, size_t errlen)
{
    if (path == NULL || path[0] == '\0') {
        ec_set_err(err, errlen, "sim: empty register file path");
        return EC_EINVAL;
    }
    volatile sim_regs *r = NULL;
    int rc = map_regs(path, 1, &r, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    memset((void *)r, 0, sizeof(sim_regs));
    r->version = SIM_REGS_VERSION;
    r->clock_mode = SIM_CLOCK_WALL;
    r->time_scale = 1.0;
    r->magic = SIM_REGS_MAGIC; /* last: a reader seeing the magic sees an initialised file */
    msync((void *)r, sizeof(sim_regs), MS_SYNC);
    munmap((void *)r, sizeof(sim_regs));
    return EC_OK;
}

static int sim_open(ec_driver *d, const char *params, char *err, size_t errlen)
{
    static const char *const known[] = {"path", NULL};
    int rc = ec_param_check_keys(params, known, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    char path[512];
    rc = ec_param_get(params, "path", path, sizeof path);
    if (rc != 1) {
        ec_set_err(err, errlen, rc == 0 ? "sim: missing param 'path'" : "sim: param 'path' too long");
        return EC_EINVAL;
    }
    sim_priv *p = calloc(1, sizeof *p);
    if (p == NULL) {
        ec_set_err(err, errlen, "sim: out of memory");
        return EC_ENOMEM;
    }
    rc = map_regs(path, 0, &p->regs, err, errlen);
    if (rc != EC_OK) {
        free(p);
        return rc;
    }
    if (p->regs->magic != SIM_REGS_MAGIC || p->regs->version != SIM_REGS_VERSION) {
        ec_set_err(err, errlen, "sim: '%s' is not a version %d register file (magic %#x, version %u)", path,
                   SIM_REGS_VERSION, (unsigned)p->regs->magic, (unsigned)p->regs->version);
        munmap((void *)p->regs, sizeof(sim_regs));
        free(p);
        return EC_EINVAL;
    }
    p->last_plant_ns = p->regs->plant_ns;
    p->last_plant_change_wall = ec_monotonic_ns();
    d->priv = p;
    d->n_ai = SIM_MAX_AI;
    d->n_di = SIM_MAX_DI;
    d->n_do = SIM_MAX_DO;
    return EC_OK;
}

static int sim_read(ec_driver *d)
{
    sim_priv *p = d->priv;
    volatile sim_regs *r = p->regs;
    uint32_t stale = 0;
    if (r->clock_mode == SIM_CLOCK_PLANT) {
        int64_t wall = ec_monotonic_ns();
        int64_t plant = r->plant_ns;
        if (plant != p->last_plant_ns) {
            p->last_plant_ns = plant;
            p->last_plant_change_wall = wall;
        } else if (wall - p->last_plant_change_wall > PLANT_SILENT_NS) {
            stale = EC_ST_STALE;
        }
    }
    for (uint32_t i = 0; i < SIM_MAX_AI; i++) {
        d->ai[i] = r->ai[i];
        d->ai_status[i] = (r->ai_fault[i] ? EC_ST_FAULT : EC_ST_OK) | stale;
        d->ai_t_ns[i] = 0;
    }
    for (uint32_t i = 0; i < SIM_MAX_DI; i++) {
        d->di[i] = r->di[i] ? 1 : 0;
        d->di_status[i] = stale;
    }
    return EC_OK;
}

static int64_t sim_clock(ec_driver *d)
{
    sim_priv *p = d->priv;
    if (p->regs->clock_mode == SIM_CLOCK_PLANT) {
        return p->regs->plant_ns;
    }
    return ec_monotonic_ns();
}

static int sim_write(ec_driver *d, const uint8_t *levels, uint64_t mask)
{
    sim_priv *p = d->priv;
    volatile sim_regs *r = p->regs;
    int64_t wall = 0;
    int64_t plant = 0;
    int64_t now = sim_clock(d);
    int64_t span = 0; /* the plant writes the clock: a jump or a wrap must not overflow (saturate to 0) */
    if (p->last_write_clock == 0 || now <= p->last_write_clock ||
        __builtin_sub_overflow(now, p->last_write_clock, &span)) {
        span = 0;
    }
    p->last_write_clock = now;
    for (uint32_t i = 0; i < SIM_MAX_DO && mask != 0; i++) {
        if (!(mask & (1ULL << i))) {
            continue;
        }
        mask &= ~(1ULL << i);
        uint8_t lv = levels[i] ? 1 : 0;
        if (r->do_level[i]) {
            r->do_on_ns[i] += span; /* the level held since the previous write */
        }
        if (r->do_level[i] != lv) {
            if (wall == 0) {
                wall = ec_monotonic_ns();
                plant = sim_clock(d);
            }
            r->do_changed_wall_ns[i] = wall;
            r->do_changed_plant_ns[i] = plant;
            r->do_level[i] = lv;
            r->output_changes++;
        }
    }
    r->core_ticks++;
    return EC_OK;
}

static void sim_close(ec_driver *d)
{
    sim_priv *p = d->priv;
    if (p != NULL) {
        munmap((void *)p->regs, sizeof(sim_regs));
        free(p);
        d->priv = NULL;
    }
}

const ec_driver_ops ec_driver_sim = {"sim", sim_open, sim_read, sim_write, sim_clock, sim_close};
