/*
 * sim_regs.h - the shared register file of the virtual rig.
 *
 * One memory-mapped file that stands where the wires of a real furnace would be.
 * The plant process (hil/) writes the inputs and the clock and reads the outputs;
 * the core's `sim` driver does the opposite. Both sides map this same layout: the
 * C driver through this header, Python through cffi generated from this header.
 *
 * Rules of the road:
 *  - every field is naturally aligned and at most 8 bytes wide, so a single
 *    load or store is atomic on the 64-bit targets we run on (x86-64, aarch64);
 *  - a writer owns each field: the plant owns ai, ai_fault, di, plant_ns;
 *    the core owns do_level, do_changed_wall_ns, do_changed_plant_ns, core_ticks, output_changes;
 *  - `magic` and `version` are checked on open: a stale or foreign file is an error.
 *
 * Everything between the CDEF markers must stay in the subset of C that cffi's
 * cdef parser accepts: the build script feeds exactly that region to cdef().
 */
#ifndef SIM_REGS_H
#define SIM_REGS_H

#include <stdint.h>

/* CDEF-BEGIN */
#define SIM_REGS_MAGIC 0x52454547
#define SIM_REGS_VERSION 2
#define SIM_MAX_AI 64
#define SIM_MAX_DI 64
#define SIM_MAX_DO 64

/* clock_mode: where the core's clock comes from */
#define SIM_CLOCK_WALL 0  /* CLOCK_MONOTONIC of this machine */
#define SIM_CLOCK_PLANT 1 /* plant_ns, advanced by the plant process */

typedef struct sim_regs {
    uint32_t magic;
    uint32_t version;
    uint32_t clock_mode;
    uint32_t plant_alive;          /* plant sets 1 while it runs */
    int64_t plant_ns;              /* plant time, written by the plant */
    double time_scale;             /* plant seconds per wall second (information) */
    double ai[SIM_MAX_AI];         /* analog inputs in engineering or raw units (mV for TCs) */
    uint32_t ai_fault[SIM_MAX_AI]; /* nonzero: the plant reports a broken sensor / open circuit */
    uint8_t di[SIM_MAX_DI];        /* digital input levels, 0 or 1 */
    uint8_t do_level[SIM_MAX_DO];  /* output levels written by the core */
    int64_t do_changed_wall_ns[SIM_MAX_DO];  /* CLOCK_MONOTONIC when the level last changed */
    int64_t do_changed_plant_ns[SIM_MAX_DO]; /* core clock when the level last changed */
    uint64_t core_ticks;           /* sampler ticks that wrote outputs */
    uint64_t output_changes;       /* output level changes written by the core */
    /* time each output has spent at level 1, in core-clock ns, summed by the core at every write.
     * The plant reads a burst-fired heater's mean level from it: sampling do_level at the plant's
     * own rate would alias against the core's tick (a 50 % duty toggling every tick, sampled
     * every second tick, reads as always on or always off). */
    int64_t do_on_ns[SIM_MAX_DO];
} sim_regs;
/* CDEF-END */

#endif
