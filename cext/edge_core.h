/*
 * edge_core.h - the whole contract of the reeproduce-edge C core.
 *
 * The core samples the plant at a fixed period on its own POSIX thread, converts and
 * filters every channel, evaluates the interlocks, gates the outputs and records
 * samples and events in ring buffers that Python drains. It knows nothing of Python,
 * MQTT or recipes. Every function returns a negative EC_E* code on failure, else EC_OK (0), an
 * index (ec_core_add_*) or a count (drains, latest, set_latch_file); where a
 * function takes `err`, a human-readable reason is written there (NUL-terminated,
 * truncated to `errlen`). Nothing here aborts or exits.
 *
 * Life cycle: ec_core_new -> ec_core_add_driver / _add_channel / _add_output /
 * _add_rule / _add_permissive / _set_* -> ec_core_start -> (run) -> ec_core_stop ->
 * ec_core_free. Configuration calls are refused once started (EC_ESTATE).
 *
 * Clocks: the core's clock is its driver 0's clock (the `sim` driver's clock is the
 * plant's clock), in nanoseconds. Debounce, rates, staleness, keep-alives and the
 * dead-man are all measured on it, so a plant running faster than real time is seen
 * consistently. The sampler period and the jitter figures are wall (CLOCK_MONOTONIC).
 *
 * The region between the CDEF markers is fed to cffi's cdef() by cext/build_core.py:
 * it must stay in the C subset that parser accepts (no macros with arguments, no
 * expressions in #defines, no inline functions).
 */
#ifndef EDGE_CORE_H
#define EDGE_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF-BEGIN */
/* ---- limits ---- */
#define EC_MAX_DRIVERS 8
#define EC_MAX_CHANNELS 64
#define EC_MAX_OUTPUTS 64
#define EC_MAX_RULES 64
#define EC_MAX_PERMISSIVES 128
#define EC_NAME_LEN 32
#define EC_MEDIAN_MAX 9
#define EC_JITTER_BUCKETS 1002   /* 10 us wide up to 10 ms, then overflow */
#define EC_JITTER_BUCKET_NS 10000
#define EC_CLOCK_STALL_MS 500    /* core clock standing still this long (wall) = core fault */
#define EC_RESET_HOLD_MS 100     /* the local reset input must be held this long, after a release */
#define EC_INJECT_FUTURE_MS 1000 /* an injected timestamp further ahead of the core clock is refused */
#define EC_WATCHDOG_PROOF_MS 3000 /* each step of the watchdog proof test must be seen within this: wall time
                                    for a started core, the core clock for one stepped by run_ticks */
#define EC_WATCHDOG_PROOF_STEADY 5 /* ... and each level of the relay's feedback held this many ticks in a row */

/* ---- error codes ---- */
#define EC_OK 0
#define EC_EINVAL -1     /* bad argument */
#define EC_ERANGE -2     /* value outside the accepted range (incl. thermocouple EMF / temperature) */
#define EC_ESTATE -3     /* not allowed in the current state (e.g. configure while running) */
#define EC_EIO -4        /* a driver failed to talk to its device */
#define EC_ENOMEM -5     /* allocation failed */
#define EC_ENOTFOUND -6  /* unknown name or index */
#define EC_EFULL -7      /* a table is full */
#define EC_EREFUSED -8   /* output request refused by the gate (forced safe or permissive) */
#define EC_ECONDITION -9 /* reset refused: the rule's condition still holds */

/* ---- status bits carried by every value ---- */
#define EC_ST_OK 0
#define EC_ST_FAULT 1    /* sensor fault / open circuit reported by the driver */
#define EC_ST_RANGE 2    /* outside the channel's (or the thermocouple's) valid range */
#define EC_ST_STALE 4    /* not updated within its max age */
#define EC_ST_NODATA 8   /* never had a value yet */

/* ---- channel kinds ---- */
#define EC_CH_ANALOG 0        /* value = raw * scale + offset */
#define EC_CH_THERMOCOUPLE 1  /* raw * scale + offset is EMF in mV, compensated with a cold-junction channel */
#define EC_CH_DIGITAL 2       /* value = level (0/1), optionally inverted */
#define EC_CH_INJECTED 3      /* value pushed by Python with its own timestamp and max age */

/* ---- interlock rule kinds ----
 * A threshold rule (HIGH, LOW, RATE_*, DIGITAL) also trips, flagged EC_EVF_SENSOR_BAD, when its
 * channel's value is FAULT, RANGE, STALE or NODATA (an injected channel gets max_age_ms of grace
 * after start): a value that cannot be trusted cannot show the plant is safe.
 * Hysteresis applies as soon as the condition starts holding (during the debounce), not only once
 * tripped: a value hovering at the threshold with noise keeps the debounce running and trips.
 * A faulted sample keeps the rate history (only the median/EMA restart), so a one-tick fault does
 * not leave a rate rule blind for half its window.
 * First-out: one event per cascade. Among rules tripping in the same tick, a FAULT/STALE rule is
 * the first-out when the first in order tripped only because its value is bad (same channel
 * first); a core fault starting a cascade is its first-out (first_out stays -1). */
#define EC_RULE_HIGH 0       /* trip when value > threshold; clear below threshold - hysteresis */
#define EC_RULE_LOW 1        /* trip when value < threshold; clear above threshold + hysteresis */
#define EC_RULE_RATE_HIGH 2  /* trip when rate (units/min) > threshold */
#define EC_RULE_RATE_LOW 3   /* trip when rate (units/min) < threshold (e.g. a fast fall) */
#define EC_RULE_DIGITAL 4    /* trip when the level is not `threshold` (0 or 1) */
#define EC_RULE_FAULT 5      /* trip when the channel has FAULT or RANGE status */
#define EC_RULE_STALE 6      /* trip when the channel is STALE or has no data */
#define EC_RULE_DEADMAN 7    /* trip when heartbeat() is older than `threshold` ms; no channel */
/* output written at one level continuously and its feedback `channel` says the other for longer than
 * debounce_ms. Feedback "on": digital level 1 / analog value > threshold (hysteresis below). Expected
 * "on" = written level != safe_level. Any change of the written level restarts the count (burst fire
 * never trips it on its own). Feedback value bad (FAULT/RANGE/STALE/NODATA) = condition holds, sensor-bad.
 * Its events carry output = the output, value = the feedback value, aux = the written level. */
#define EC_RULE_DISCREPANCY 8
/* |channel - channel2| > threshold (clears below threshold - hysteresis) for debounce_ms; either value
 * bad = trips sensor-bad. Its events carry value = channel - channel2, aux = channel2. */
#define EC_RULE_AGREE 9

/* ---- permissive comparisons ---- */
#define EC_CMP_LT 0
#define EC_CMP_GT 1
#define EC_CMP_EQ 2          /* for digital channels: level == value */
#define EC_CMP_IN 3          /* value in [value, value2] */

/* ---- event kinds ---- */
#define EC_EV_TRIP 1             /* rule tripped (flags: FIRST_OUT, SENSOR_BAD) */
#define EC_EV_CLEAR 2            /* a non-latched rule's condition cleared (a latched one needs EC_EV_RESET) */
#define EC_EV_RESET 3            /* a latched rule was reset */
#define EC_EV_RESET_REFUSED 4    /* reset asked while the condition still holds */
#define EC_EV_REFUSED 5          /* output request refused (rule = forcing rule, or permissive index) */
#define EC_EV_PERMISSIVE_DROP 6  /* energised output dropped: its permissive stopped holding */
#define EC_EV_KEEPALIVE_DROP 7   /* energised output dropped: not refreshed within max_on_ms */
#define EC_EV_FORCED_SAFE 8      /* output forced to its safe level by a trip */
#define EC_EV_OVERRUN 9          /* the sampler missed one or more ticks (value = ticks missed) */
#define EC_EV_DRIVER_ERROR 10    /* a driver call failed (value = driver index) */
#define EC_EV_STARTED 11
#define EC_EV_STOPPED 12
#define EC_EV_CORE_FAULT 13      /* aux = EC_FAULT_* bits: every output safe, watchdog line stopped */

#define EC_EVF_FIRST_OUT 1       /* this trip (or core fault) was the first of its cascade: one per cascade */
#define EC_EVF_SENSOR_BAD 2      /* the rule tripped because its channel's value was not OK */
#define EC_EVF_LOCAL_INPUT 4     /* reset came from the local reset input */
#define EC_EVF_CORE_FAULT 8      /* the event concerns a core fault (aux = EC_FAULT_* bits), not a rule */
#define EC_EVF_RESTORED 16       /* a latched trip restored from the latch file at start-up */
#define EC_EVF_LATCH_BAD 32      /* with RESTORED: the latch file could not be trusted (aux = EC_LATCH_*), so
                                    every latchable rule was restored tripped (fail safe) */
#define EC_EVF_REMOTE 64         /* reset asked from afar (ec_core_reset_remote) */

/* why a latch file could not be trusted (aux of an EC_EVF_LATCH_BAD trip) */
#define EC_LATCH_SHORT 1         /* it exists but is shorter than an image (cut short, or an old version) */
#define EC_LATCH_HEADER 2        /* magic or version wrong */
#define EC_LATCH_CHECKSUM 3      /* its CRC-32 does not match */

/* core faults: latched like a trip, cleared by a reset once the cause is gone (CLOCK_BACKWARDS:
 * once the clock has advanced again). While one is latched every output is held safe and the
 * watchdog line stops toggling. */
#define EC_FAULT_CLOCK_BACKWARDS 1
#define EC_FAULT_CLOCK_STOPPED 2
#define EC_FAULT_OUTPUT_WRITE 4
#define EC_FAULT_TICK_GAP 8        /* wall time between two sampler ticks above max_tick_gap_ms */
#define EC_FAULT_WATCHDOG_PROOF 16 /* the watchdog relay's feedback did not follow the line at start-up */

/* refusal reasons (event `aux`) */
#define EC_REFUSE_FORCED 1       /* a tripped rule forces this output safe; `rule` names it */
#define EC_REFUSE_PERMISSIVE 2   /* permissive `aux2` does not hold */

/* sampler scheduling actually obtained (ec_stats.sched) */
#define EC_SCHED_OTHER 0
#define EC_SCHED_FIFO 1
#define EC_MLOCK_NONE 0
#define EC_MLOCK_OK 1

typedef struct ec_core ec_core;

typedef struct ec_core_cfg {
    double period_ms;          /* sampler period, 0.1 .. 1000 */
    int32_t rt_priority;       /* SCHED_FIFO priority to ask for, 0 = do not ask */
    int32_t lock_memory;       /* 1 = try mlockall */
    uint32_t sample_ring;      /* samples the ring holds (power of two, >= 16) */
    uint32_t event_ring;       /* events the ring holds (power of two, >= 16) */
    int32_t reset_channel;     /* digital channel whose rising edge resets latched rules, -1 none */
    int32_t watchdog_output;   /* output toggled every tick for an external watchdog relay, -1 none */
    /* digital channel: the watchdog relay's auxiliary contact, 1 = relay energised; -1 none. With it
     * (and watchdog_output) the core proves the relay at start-up: the line is held still until the
     * feedback reads 0 (relay dropped), then toggled until it reads 1; until both are seen no output
     * may leave its safe level (requests refused: "watchdog proof test running"). A step not seen within
     * EC_WATCHDOG_PROOF_MS = core fault EC_FAULT_WATCHDOG_PROOF; a local reset re-runs it. */
    int32_t watchdog_feedback;
    double max_tick_gap_ms;    /* wall time between two sampler ticks above this = core fault; 0 = off */
    int32_t allow_remote_reset; /* 0: ec_core_reset_remote is refused for every rule */
} ec_core_cfg;

typedef struct ec_channel_cfg {
    char name[EC_NAME_LEN];
    int32_t kind;              /* EC_CH_* */
    int32_t driver;            /* driver index (ignored for INJECTED) */
    int32_t input;             /* driver input index: analog for ANALOG/THERMOCOUPLE, digital for DIGITAL */
    double scale;              /* raw -> value; for THERMOCOUPLE raw -> mV */
    double offset;
    double range_lo;           /* outside [range_lo, range_hi] the value gets EC_ST_RANGE */
    double range_hi;
    char tc_type;              /* 'B','E','J','K','N','R','S','T' for THERMOCOUPLE */
    int32_t cj_channel;        /* cold-junction channel (declared earlier), -1 = use cj_fixed_c */
    double cj_fixed_c;
    int32_t invert;            /* DIGITAL: 1 = active low */
    int32_t median_n;          /* 1 (off) .. EC_MEDIAN_MAX, odd; on a DIGITAL channel a majority vote */
    double ema_tau_ms;         /* EMA time constant, 0 = off */
    double max_age_ms;         /* INJECTED (and any driver input): older than this = STALE; 0 = no limit */
    double rate_window_ms;     /* window the rate of change (per minute) is measured over; 0 = none */
} ec_channel_cfg;

typedef struct ec_output_cfg {
    char name[EC_NAME_LEN];
    int32_t driver;
    int32_t line;              /* driver output index */
    int32_t safe_level;        /* 0 or 1: the level it is forced to */
    double max_on_ms;          /* keep-alive: away from safe longer than this without a refresh -> drop; 0 = none */
    double duty_cycle_ms;      /* burst-fire cycle for set_duty, e.g. 20 ms for 50 Hz mains */
} ec_output_cfg;

typedef struct ec_rule_cfg {
    char name[EC_NAME_LEN];
    int32_t kind;              /* EC_RULE_* */
    int32_t channel;           /* -1 for DEADMAN */
    double threshold;
    double hysteresis;
    double debounce_ms;        /* condition must hold this long before the trip */
    int32_t latch;             /* 1 = stays tripped until reset after the condition cleared */
    uint64_t action;           /* bit i: output i forced to its safe level while tripped */
    int32_t output;            /* DISCREPANCY: the output whose written level is compared; -1 otherwise */
    int32_t channel2;          /* AGREE: the second channel; -1 otherwise */
    int32_t local_reset_only;  /* 1: only a local reset (reset input, ec_core_reset) may reset it, never a remote one */
} ec_rule_cfg;

typedef struct ec_permissive_cfg {
    int32_t output;            /* the output this condition guards */
    int32_t channel;
    int32_t cmp;               /* EC_CMP_* */
    double value;
    double value2;             /* upper bound for EC_CMP_IN */
} ec_permissive_cfg;

typedef struct ec_value {
    double value;
    uint32_t status;           /* EC_ST_* bits */
    int64_t t_ns;              /* core clock when this value was taken */
} ec_value;

/* One consistent view of the core for a controller's scan (ec_core_snapshot): channels as
 * structure-of-arrays so a binding copies each array in one call. */
typedef struct ec_snapshot {
    uint64_t tick;             /* the ticks run so far: every field below is as that tick left it */
    int64_t now_ns;            /* core clock when copied (>= every t_ns) */
    int32_t n_channels;
    int32_t n_outputs;
    int32_t n_rules;
    int32_t first_out;         /* as ec_core_rules */
    double value[EC_MAX_CHANNELS];     /* as ec_core_latest */
    uint32_t status[EC_MAX_CHANNELS];
    int64_t t_ns[EC_MAX_CHANNELS];
    uint64_t levels;           /* as ec_core_outputs */
    uint64_t requested;
    uint64_t forced;
    uint64_t tripped;          /* as ec_core_rules */
    uint64_t resettable;
    double threshold[EC_MAX_RULES];    /* effective, as ec_core_rule_threshold */
} ec_snapshot;

typedef struct ec_sample {
    uint64_t tick;
    int64_t t_ns;              /* core clock */
    uint64_t outputs;          /* bit i: level of output i after the gate */
    uint64_t tripped;          /* bit i: rule i tripped (active or latched) */
    double value[EC_MAX_CHANNELS];
    uint8_t status[EC_MAX_CHANNELS];
} ec_sample;

typedef struct ec_event {
    uint64_t seq;              /* per core, from 1, no gaps unless overflow */
    int64_t t_ns;              /* core clock */
    int64_t wall_ns;           /* CLOCK_MONOTONIC */
    int32_t kind;              /* EC_EV_* */
    int32_t flags;             /* EC_EVF_* */
    int32_t rule;              /* -1 when none */
    int32_t output;            /* -1 when none */
    int32_t channel;           /* -1 when none */
    int32_t aux;               /* kind-specific (refusal reason) */
    int32_t aux2;              /* kind-specific (permissive index) */
    double value;              /* the measured value that caused it */
    double threshold;
} ec_event;

typedef struct ec_stats {
    uint64_t ticks;
    uint64_t overruns;         /* ticks missed because a tick ran past its deadline */
    uint64_t samples_lost;     /* samples dropped because the ring was full */
    uint64_t events_lost;      /* events dropped because the ring was full (see the event ring, below) */
    int64_t jitter_max_ns;     /* worst wake-up lateness */
    int64_t exec_max_ns;       /* worst tick execution time */
    int32_t sched;             /* EC_SCHED_* obtained */
    int32_t mlock;             /* EC_MLOCK_* obtained */
    int32_t running;
    uint32_t core_fault;       /* EC_FAULT_* bits latched */
    int32_t n_channels;
    int32_t n_outputs;
    int32_t n_rules;
    uint64_t jitter_hist[EC_JITTER_BUCKETS]; /* wake-up lateness, EC_JITTER_BUCKET_NS wide, last = overflow */
    int32_t proof_pending;     /* the watchdog proof test has neither passed nor failed yet (outputs held safe):
                                * a batch is started only once it is over, and refused if it failed */
} ec_stats;

/* ---- life cycle and configuration ---- */
void ec_core_cfg_default(ec_core_cfg *cfg);
void ec_channel_cfg_default(ec_channel_cfg *cfg);
void ec_output_cfg_default(ec_output_cfg *cfg);
void ec_rule_cfg_default(ec_rule_cfg *cfg);

int ec_core_new(const ec_core_cfg *cfg, ec_core **out, char *err, size_t errlen);
void ec_core_free(ec_core *core);

/* driver: "sim", "gpiochip" or "spidev"; params "key=value;key=value" (see each driver) */
int ec_core_add_driver(ec_core *core, const char *driver, const char *params, char *err, size_t errlen);
int ec_core_add_channel(ec_core *core, const ec_channel_cfg *cfg, char *err, size_t errlen);
int ec_core_add_output(ec_core *core, const ec_output_cfg *cfg, char *err, size_t errlen);
int ec_core_add_rule(ec_core *core, const ec_rule_cfg *cfg, char *err, size_t errlen);
int ec_core_add_permissive(ec_core *core, const ec_permissive_cfg *cfg, char *err, size_t errlen);
/* Keep latched trips in `path` so that a crash or restart is not an implicit reset. Call after
 * every rule is added (before: EC_ESTATE and the file is left untouched; a rule added after it:
 * EC_ESTATE), before start. Returns the number of latched trips restored (>= 0). A missing file
 * is created; a file that exists but is too short, has a wrong magic/version or a wrong CRC-32
 * fails safe: every latchable rule is restored tripped (EC_EVF_RESTORED | EC_EVF_LATCH_BAD,
 * aux = EC_LATCH_*) and the file is rewritten sane. The rule-set hash covers each rule's whole
 * ec_rule_cfg (start from ec_rule_cfg_default): a changed station restores every latchable rule
 * tripped if any trip was latched. A trip change is msync(MS_SYNC)ed in the tick that makes it,
 * after the outputs were written and before anything can report it. A symlink or a file that is not
 * regular: EC_EIO (never followed, never written). A file another core holds (flock): EC_ESTATE. A
 * restored core fault is reported by an EC_EV_CORE_FAULT event flagged EC_EVF_RESTORED. */
int ec_core_set_latch_file(ec_core *core, const char *path, char *err, size_t errlen);

int ec_core_start(ec_core *core, char *err, size_t errlen);
int ec_core_stop(ec_core *core);

/* ---- runtime (any thread; each takes the core lock briefly, except drain_samples, which is
 * lock-free and single-consumer: drain samples from one thread only) ---- */
/* from the scan thread only: the thread that called ec_core_start or, for a core stepped by run_ticks,
 * the first thread that called run_ticks (pthread_t and kernel thread id: a new thread that was handed an
 * ended scan thread's pthread_t is refused). Any other thread gets EC_ESTATE and does not feed the dead-man. */
int ec_core_heartbeat(ec_core *core);
/* level 0/1. Away from the safe level it must pass the gate; refused -> EC_EREFUSED and err says why. */
int ec_core_request_output(ec_core *core, int32_t output, int32_t level, char *err, size_t errlen);
/* time-proportioned drive, duty 0..1 of the output's non-safe level; also refreshes the keep-alive */
int ec_core_set_duty(ec_core *core, int32_t output, double duty, char *err, size_t errlen);
/* t_ns on the core clock (at most EC_INJECT_FUTURE_MS ahead, never older than the last value), or
 * INT64_MIN (EC_INJECT_NOW, below) for "now", read under the same lock as the store. A stamp ahead of
 * the core clock is stored as the core clock's now: it never blocks a later honest reading nor keeps
 * the channel fresh past max_age_ms. A value stamped like the last one supersedes it (the plant clock
 * stands still between plant steps): it takes effect and replaces the last sample in the filters.
 * status EC_ST_OK, EC_ST_FAULT or EC_ST_RANGE from the source, e.g. a node's own fault bit */
int ec_core_inject(ec_core *core, int32_t channel, double value, uint32_t status, int64_t t_ns, char *err,
                   size_t errlen);
/* rule index, or -1 for every latched rule whose condition has cleared. A local call. A rule is
 * reset only if its condition was evaluated in this run on valid, fresh data and found clear:
 * restored from the latch file and not yet ticked, or in an injected channel's start-up grace =
 * EC_ECONDITION, "not yet evaluated on fresh data". */
int ec_core_reset(ec_core *core, int32_t rule, char *err, size_t errlen);
/* a reset asked from afar (MQTT): EC_EREFUSED unless allow_remote_reset; never resets a local_reset_only
 * rule (-1 resets the others and returns EC_EREFUSED naming it) nor a core fault (those need a local reset) */
int ec_core_reset_remote(ec_core *core, int32_t rule, char *err, size_t errlen);

/* A rule's EFFECTIVE threshold at run time, e.g. an agreement band narrowed while the process holds a
 * settled soak. Accepted only if at least as strict as the configured one: HIGH and AGREE <= configured,
 * LOW >= configured; other kinds, NaN/inf, an agree band not above its hysteresis and a HIGH/LOW value
 * outside the channel's range are refused (EC_EINVAL / EC_ERANGE) and change nothing. `threshold` = the
 * configured value restores it. A move towards the configured value while the rule is tripped is refused
 * (EC_ESTATE): a trip taken at the tight threshold is judged, and reset, at it. Takes effect at the next
 * evaluation; the condition's hysteresis and debounce apply as before. Events carry the effective
 * threshold. Not kept across a restart (a new core starts at the configured one) and not in the latch
 * file's rule-set hash (that is the configuration's). */
int ec_core_tighten_rule(ec_core *core, int32_t rule, double threshold, char *err, size_t errlen);
/* the rule's effective threshold (the configured one unless tightened) */
int ec_core_rule_threshold(ec_core *core, int32_t rule, double *effective);
int ec_core_latest(ec_core *core, ec_value *out, int32_t n);         /* returns channels copied */
int ec_core_outputs(ec_core *core, uint64_t *levels, uint64_t *requested, uint64_t *forced);
/* tripped: bit i = rule i tripped; resettable: latched, evaluated on fresh data and clear; first_out:
 * the first rule of the present cascade, kept until every rule of it has cleared or been reset */
int ec_core_rules(ec_core *core, uint64_t *tripped, uint64_t *resettable, int32_t *first_out);
int64_t ec_core_now_ns(ec_core *core);
/* latest values, outputs, rules and effective thresholds copied under the core's lock in ONE call:
 * all of one tick (the sampler ticks under the same lock), none torn between two; what the separate
 * accessors above give, at one cffi crossing instead of one per rule threshold */
int ec_core_snapshot(ec_core *core, ec_snapshot *out);
int ec_core_drain_samples(ec_core *core, ec_sample *out, int32_t max); /* returns count */
/* The event ring never drops a latched rule's trip (restored ones included), a core fault, or a
 * non-latched rule's first-out trip (one undrained per rule): the last min(n_rules + 8, ring / 2)
 * slots are reserved for them, enough while no rule trips twice between drains; ec_core_add_rule refuses
 * (EC_EFULL) a rule when event_ring < 2 * (rules + 8), where the reserve could not hold every rule. Everything else
 * may be dropped when nobody drains, and is counted in ec_stats.events_lost: refusals, overruns
 * and refused resets first (they also leave an eighth of the ring free), then clears, resets,
 * forced-safe / permissive / keep-alive drops, driver errors, start/stop, and non-latched trips. */
int ec_core_drain_events(ec_core *core, ec_event *out, int32_t max);   /* returns count */
int ec_core_stats(ec_core *core, ec_stats *out);
/* never started: run n ticks inline (lockstep simulation, tests). A stopped core is stopped for good:
 * run_ticks, start, reset and energising requests then return EC_ESTATE. ec_core_stop on a core
 * stepped only by run_ticks writes every output safe and is as terminal. */
int ec_core_run_ticks(ec_core *core, int32_t n);

/* ---- thermocouples (NIST ITS-90 reference functions) ---- */
/* EMF in mV with the reference junction at 0 degC. EC_ERANGE outside the type's range. */
int ec_tc_celsius_to_emf(char tc_type, double t_c, double *emf_mv);
int ec_tc_emf_to_celsius(char tc_type, double emf_mv, double *t_c);
/* hot junction from a measured EMF and a cold-junction temperature */
int ec_tc_compensated(char tc_type, double emf_mv, double cj_c, double *t_c);
int ec_tc_range(char tc_type, double *t_min, double *t_max, double *emf_min, double *emf_max);
/* batch: status[i] = EC_ST_OK or EC_ST_RANGE (out[i] = NaN); returns EC_OK or EC_EINVAL */
int ec_tc_celsius_to_emf_batch(char tc_type, const double *t_c, double *emf_mv, uint8_t *status, size_t n);
int ec_tc_emf_to_celsius_batch(char tc_type, const double *emf_mv, double cj_c, double *t_c, uint8_t *status, size_t n);

/* ---- sim register file helpers (used by the sim driver and the plant) ---- */
int ec_sim_create(const char *path, char *err, size_t errlen);  /* create and initialise a register file */
const char *ec_strerror(int code);
/* CDEF-END */

/* ec_core_inject's t_ns = EC_INJECT_NOW: the core reads its clock under the same lock as it stores the
 * value, so several threads feeding one channel never see their own readings refused as out of order.
 * (Outside the cdef region: cffi's parser takes no expressions; edge/core.py passes -2**63.) */
#define EC_INJECT_NOW INT64_MIN

#ifdef __cplusplus
}
#endif
#endif
