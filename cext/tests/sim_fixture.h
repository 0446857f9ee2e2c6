/*
 * sim_fixture.h - the sim register-file plumbing shared by the core's C test programs.
 *
 * Each program defines SIM_FIXTURE_NAME (a short string) before including this, so its register
 * file is /tmp/ec-NAME-PID.regs: test programs run in parallel must never share a register file.
 * The file runs in plant-clock mode; run_ms() steps plant time and the core together, one tick
 * per ms, so every timing in the tests is exact and repeatable.
 */
#ifndef SIM_FIXTURE_H
#define SIM_FIXTURE_H

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ctest.h"
#include "edge_core.h"
#include "sim_regs.h"

#ifndef SIM_FIXTURE_NAME
#error "define SIM_FIXTURE_NAME (unique per test program) before including sim_fixture.h"
#endif

#define SIM_FIXTURE_UNUSED __attribute__((unused))

static char path[64];
static sim_regs *regs;
static char err[256];
static char params[128];

/* create the register file and map it; plant time starts at 1 s */
static SIM_FIXTURE_UNUSED void open_regs(void)
{
    snprintf(path, sizeof path, "/tmp/ec-" SIM_FIXTURE_NAME "-%d.regs", (int)getpid());
    CHECK(ec_sim_create(path, err, sizeof err) == EC_OK);
    int fd = open(path, O_RDWR);
    regs = mmap(NULL, sizeof(sim_regs), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    regs->clock_mode = SIM_CLOCK_PLANT;
    regs->plant_ns = 1000000000LL;
}

static SIM_FIXTURE_UNUSED void close_regs(void)
{
    munmap(regs, sizeof(sim_regs));
    unlink(path);
}

/* attach the sim driver on this program's register file (driver index 0) */
static SIM_FIXTURE_UNUSED void add_sim_driver(ec_core *c)
{
    snprintf(params, sizeof params, "path=%s", path);
    CHECK(ec_core_add_driver(c, "sim", params, err, sizeof err) == 0);
}

/* advance plant time by ms, one tick per ms */
static SIM_FIXTURE_UNUSED void run_ms(ec_core *c, int ms)
{
    for (int i = 0; i < ms; i++) {
        regs->plant_ns += 1000000LL;
        CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    }
}

#endif
