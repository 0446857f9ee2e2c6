/*
 * core.c - the sampler, the channels, the interlock engine and the output gate.
 *
 * One tick, in order (tick()):
 *   1. every driver reads its inputs;
 *   2. every channel converts (scale/offset, thermocouple EMF with cold junction),
 *      checks range and age, filters (median-of-N, then EMA) and updates its rate;
 *   3. every rule is evaluated (debounce, hysteresis, latch) and first-out recorded;
 *   4. the gate computes each output's level: forced safe by tripped rules, dropped
 *      when its permissive fails or its keep-alive expires, burst-fire for duty;
 *   5. the drivers write the outputs, then the sample is pushed to the ring.
 * An input change therefore reaches the outputs within the same tick.
 *
 * Concurrency: one mutex (priority-inheriting) guards the state shared by the sampler
 * and the API calls; every API call holds it for microseconds and never calls out.
 * The sample ring is single-producer (the tick) / single-consumer (drain) and is read
 * without the lock, so a slow drain never delays a tick. C11 atomics are used for it:
 * C99 has none, which is why the core is C11 rather than the C99 of the design note.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "driver.h"
#include "edge_core.h"

#define RATE_SLOTS 9
#define NS_PER_MS 1000000.0
#define NOT_HOLDING INT64_MIN /* rule.cond_since when the condition does not hold */

typedef struct chan {
    ec_channel_cfg cfg;
    int has_filtered;    /* the filters hold a value */
    int64_t last_t;      /* time of the sample last fed to the filters */
    double filtered;
    double med[EC_MEDIAN_MAX];
    int med_count;
    int med_pos;
    double ema;
    int ema_init;
    int64_t ema_t;
    ec_value latest;
    /* injected */
    double inj_value;
    uint32_t inj_status;
    int64_t inj_t;
    int inj_has;
    uint64_t inj_seq;    /* bumped by every accepted inject: a same-stamp value still takes effect */
    uint64_t fed_seq;    /* inj_seq of the value last fed to the filters */
    double ema_prev;     /* EMA before the last sample, and that sample's weight: a same-stamp */
    double ema_alpha;    /* injected value replaces the last sample rather than adding one */
    /* rate of change, per minute, over rate_window_ms */
    double rate_v[RATE_SLOTS];
    int64_t rate_t[RATE_SLOTS];
    int rate_n;
    int rate_pos;
    double rate;
    int rate_valid;
} chan;

typedef struct out {
    ec_output_cfg cfg;
    int energise;        /* requested away from the safe level */
    int duty_mode;
    double duty;
    double duty_acc;
    int64_t cycle_start;
    int cycle_on;
    int64_t refreshed;   /* core clock of the last request / set_duty */
    int level;           /* level written last tick */
    int was_forced;
    int cycle_started;   /* a burst-fire cycle is running */
} out;

typedef struct rule {
    ec_rule_cfg cfg;
    int cond;            /* condition holds this tick (hysteresis applied) */
    int sensor_bad;
    int64_t cond_since;  /* NOT_HOLDING: condition not holding (a plant clock may be negative) */
    int tripped;
    int64_t tripped_at;
    double value;        /* what the rule last compared */
    int evaluated;       /* the last evaluation saw valid, fresh data (no start-up grace, not restored-only) */
    uint64_t fo_seq;     /* seq of this (non-latched) rule's last first-out trip event kept in the reserve */
    int fb_on;           /* DISCREPANCY: the feedback read "on" last tick (hysteresis) */
    int last_level;      /* DISCREPANCY: the written level last tick, -1 before the first */
    double threshold;    /* the effective threshold: cfg.threshold, or stricter (ec_core_tighten_rule) */
} rule;

struct ec_core {
    ec_core_cfg cfg;
    pthread_mutex_t lock;
    pthread_t thread;
    atomic_int running;
    int started;
    int64_t period_ns;

    ec_driver drivers[EC_MAX_DRIVERS];
    int n_drivers;
    int read_failing[EC_MAX_DRIVERS];
    int write_failing[EC_MAX_DRIVERS];
    chan channels[EC_MAX_CHANNELS];
    int n_channels;
    out outputs[EC_MAX_OUTPUTS];
    int n_outputs;
    rule rules[EC_MAX_RULES];
    int n_rules;
    ec_permissive_cfg perms[EC_MAX_PERMISSIVES];
    int n_perms;

    int64_t heartbeat_t;
    int reset_armed;       /* the reset input was seen released: a press may reset */
    int64_t reset_since;   /* core clock when the present press began, -1 when released */
    int first_out;
    int stopped;           /* stopped once: terminal, nothing may energise again */
    uint32_t core_fault;   /* EC_FAULT_* bits, latched until a reset with the cause gone */
    uint32_t fault_active; /* EC_FAULT_* bits whose cause is present now */
    int64_t last_now;
    int64_t last_advance_wall;
    /* latched trips kept in a mapped file, so a crash or restart is not an implicit reset */
    struct latch_file *latch;
    uint64_t tick_no;
    int64_t start_t;
    int watchdog_level;
    int proof_state;       /* watchdog proof test: PROOF_* */
    int64_t proof_since;   /* when the present step began (proof clock), -1 before the first tick */
    int proof_wall;        /* the proof test is timed on wall time: a started core (see watchdog_proof_step) */
    int proof_steady;      /* consecutive ticks the feedback has read the level the present step waits for */
    pthread_t scan_thread; /* the only thread whose heartbeat feeds the dead-man */
    long scan_tid;         /* and its kernel thread id: glibc hands a joined thread's pthread_t to the next
                              thread, so pthread_equal alone took a new helper for an ended scan thread */
    int has_scan_thread;
    int64_t last_tick_wall; /* CLOCK_MONOTONIC of the sampler's previous tick, 0 before the first */

    /* sample ring: SPSC, head written by the tick, tail by drain */
    ec_sample *samples;
    uint32_t sample_mask;
    atomic_uint_fast64_t s_head;
    atomic_uint_fast64_t s_tail;

    /* event ring: under lock */
    ec_event *events;
    uint32_t event_mask;
    uint64_t e_head;
    uint64_t e_tail;
    uint64_t e_seq;

    ec_stats stats;
};

/* ---------- defaults ---------- */

void ec_core_cfg_default(ec_core_cfg *cfg)
{
    if (cfg == NULL) {
        return;
    }
    memset(cfg, 0, sizeof *cfg);
    cfg->period_ms = 1.0;
    cfg->sample_ring = 4096;
    cfg->event_ring = 1024;
    cfg->reset_channel = -1;
    cfg->watchdog_output = -1;
    cfg->watchdog_feedback = -1;
}

void ec_channel_cfg_default(ec_channel_cfg *cfg)
{
    if (cfg == NULL) {
        return;
    }
    memset(cfg, 0, sizeof *cfg);
    cfg->scale = 1.0;
    cfg->range_lo = -INFINITY;
    cfg->range_hi = INFINITY;
    cfg->cj_channel = -1;
    cfg->median_n = 1;
    cfg->rate_window_ms = 1000.0;
}

void ec_output_cfg_default(ec_output_cfg *cfg)
{
    if (cfg == NULL) {
        return;
    }
    memset(cfg, 0, sizeof *cfg);
    cfg->duty_cycle_ms = 20.0;
}

void ec_rule_cfg_default(ec_rule_cfg *cfg)
{
    if (cfg == NULL) {
        return;
    }
    memset(cfg, 0, sizeof *cfg);
    cfg->channel = -1;
    cfg->latch = 1;
    cfg->output = -1;
    cfg->channel2 = -1;
}

/* ---------- helpers ---------- */

static int is_pow2_at_least16(uint32_t n) { return n >= 16 && (n & (n - 1)) == 0; }

static int name_ok(const char *name)
{
    size_t n = strnlen(name, EC_NAME_LEN);
    return n > 0 && n < EC_NAME_LEN;
}

/* now - then without overflow: times come from another process (the register file) and from
 * callers, so any int64 is possible; a huge age saturates, which every check reads as "too old". */
static int64_t elapsed(int64_t now, int64_t then)
{
    int64_t d;
    if (__builtin_sub_overflow(now, then, &d)) {
        return now > then ? INT64_MAX : INT64_MIN;
    }
    return d;
}

static long thread_id(void) { return (long)syscall(SYS_gettid); }

static int64_t core_now(ec_core *c)
{
    if (c->n_drivers > 0 && c->drivers[0].ops->clock_ns != NULL) {
        return c->drivers[0].ops->clock_ns(&c->drivers[0]);
    }
    return ec_monotonic_ns();
}

static void push_event(ec_core *c, int kind, int flags, int rule_i, int out_i, int ch, int aux, int aux2,
                       double value, double threshold)
{
    /* Three classes share the ring (see edge_core.h, "event ring"). Critical events may take
     * every slot: a latched rule's trip, a core fault, and a non-latched rule's first-out trip
     * unless an earlier one of that rule is still undrained (a chattering rule's first-outs
     * would otherwise fill the reserve). The last `reserve` slots (one per rule plus 8 for core
     * faults, at most half the ring) are theirs alone; low-priority events (refusals, overruns,
     * refused resets) leave another eighth of the ring free for the normal ones. */
    uint64_t size = (uint64_t)c->event_mask + 1;
    uint64_t reserve = (uint64_t)c->n_rules + 8 < size / 2 ? (uint64_t)c->n_rules + 8 : size / 2;
    rule *r = rule_i >= 0 && rule_i < c->n_rules ? &c->rules[rule_i] : NULL;
    int critical = kind == EC_EV_CORE_FAULT || (kind == EC_EV_TRIP && r != NULL && r->cfg.latch);
    int fo_reserved = 0;
    if (kind == EC_EV_TRIP && r != NULL && !r->cfg.latch && (flags & EC_EVF_FIRST_OUT)) {
        int undrained = r->fo_seq != 0 && c->e_head != c->e_tail &&
                        r->fo_seq >= c->events[c->e_tail & c->event_mask].seq;
        critical = fo_reserved = !undrained;
    }
    int low = kind == EC_EV_REFUSED || kind == EC_EV_OVERRUN || kind == EC_EV_RESET_REFUSED;
    uint64_t room = critical ? size : size - reserve - (low ? size / 8 : 0);
    if (c->e_head - c->e_tail >= room) {
        c->stats.events_lost++;
        return;
    }
    if (fo_reserved) {
        r->fo_seq = c->e_seq + 1;
    }
    ec_event *e = &c->events[c->e_head & c->event_mask];
    e->seq = ++c->e_seq;
    e->t_ns = core_now(c);
    e->wall_ns = ec_monotonic_ns();
    e->kind = kind;
    e->flags = flags;
    e->rule = rule_i;
    e->output = out_i;
    e->channel = ch;
    e->aux = aux;
    e->aux2 = aux2;
    e->value = value;
    e->threshold = threshold;
    c->e_head++;
}

static int check_configurable(ec_core *c, char *err, size_t errlen)
{
    if (c == NULL) {
        ec_set_err(err, errlen, "core is NULL");
        return EC_EINVAL;
    }
    if (c->started) {
        ec_set_err(err, errlen, "core is running: configure before start");
        return EC_ESTATE;
    }
    return EC_OK;
}

static void safe_all_outputs(ec_core *c);
static void watchdog_proof_rearm(ec_core *c);

/* the checks every ec_core_add_* call starts with: configurable, cfg given, room in the table, a name */
static int begin_add(ec_core *c, const void *cfg, int count, int max, const char *what, const char *name,
                     char *err, size_t errlen)
{
    int rc = check_configurable(c, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (cfg == NULL) {
        ec_set_err(err, errlen, "%s cfg is NULL", what);
        return EC_EINVAL;
    }
    if (count >= max) {
        ec_set_err(err, errlen, "at most %d %ss", max, what);
        return EC_EFULL;
    }
    if (name != NULL && !name_ok(name)) {
        ec_set_err(err, errlen, "%s name empty or longer than %d", what, EC_NAME_LEN - 1);
        return EC_EINVAL;
    }
    return EC_OK;
}

/* ---------- latched trips that survive the process ----------
 * A latched trip may only be cleared by a local reset, so a crash or a restart of the
 * controller must not clear it either. The tick mirrors the latched state into a small
 * mapped file and, when it changed, msync(MS_SYNC)s it before the lock is released: the
 * outputs were already written earlier in the same tick (the safe-state latency does not
 * grow), and nothing can see the trip (events, rules, samples) before it is on disk.
 * ec_core_set_latch_file() restores it before start. The file carries a hash of the rule
 * set: if the station changed while trips were latched, every latched rule comes back
 * tripped, since which rule was which can no longer be known. A file that exists but cannot
 * be trusted (too short, wrong magic or version, CRC-32 wrong) fails safe: every latchable
 * rule comes back tripped, each with EC_EVF_RESTORED | EC_EVF_LATCH_BAD and aux = EC_LATCH_*. */

#define LATCH_MAGIC 0x524c4154u /* "RLAT" */
#define LATCH_VERSION 2         /* 2: CRC-32, whole-rule hash */

typedef struct latch_image {
    uint32_t magic;
    uint32_t version;
    uint64_t rules_hash;
    int32_t first_out;
    uint32_t core_fault;
    uint8_t tripped[EC_MAX_RULES];
    uint32_t crc;              /* CRC-32 of every byte before it */
    uint32_t spare;
} latch_image;

static uint32_t crc32_of(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

static uint32_t latch_crc(const latch_image *img) { return crc32_of(img, offsetof(latch_image, crc)); }

struct latch_file {
    latch_image *img;
    int fd;                /* kept open: it holds the flock that keeps a second core off the file */
};

/* FNV-1a over every rule's whole ec_rule_cfg: kind, channel, threshold, hysteresis, debounce,
 * latch, action and any field added later. ec_core_add_rule stores the cfg byte for byte with the
 * name's bytes past its NUL zeroed, and the padding is the caller's: zero when it started from
 * ec_rule_cfg_default (as it must); garbage there only makes the hash differ, which fails safe. */
static uint64_t rules_hash(const ec_core *c)
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < c->n_rules; i++) {
        const uint8_t *b = (const uint8_t *)&c->rules[i].cfg;
        for (size_t k = 0; k < sizeof(ec_rule_cfg); k++) {
            h = (h ^ b[k]) * 1099511628211ULL;
        }
    }
    return h;
}

static void latch_sync(ec_core *c)
{
    if (c->latch == NULL) {
        return;
    }
    latch_image *img = c->latch->img;
    int changed = 0;
    for (int i = 0; i < c->n_rules; i++) {
        uint8_t v = (uint8_t)(c->rules[i].tripped && c->rules[i].cfg.latch);
        if (img->tripped[i] != v) {
            img->tripped[i] = v;
            changed = 1;
        }
    }
    if (img->first_out != c->first_out || img->core_fault != c->core_fault) {
        img->first_out = c->first_out;
        img->core_fault = c->core_fault;
        changed = 1;
    }
    if (changed) {
        img->crc = latch_crc(img);
        msync(img, sizeof *img, MS_SYNC); /* durable before the lock is released, i.e. before any report */
    }
}

int ec_core_set_latch_file(ec_core *c, const char *path, char *err, size_t errlen)
{
    int rc = check_configurable(c, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (path == NULL || path[0] == '\0' || c->latch != NULL) {
        ec_set_err(err, errlen, path == NULL || path[0] == '\0' ? "empty latch file path" : "latch file already set");
        return EC_EINVAL;
    }
    if (c->n_rules == 0) { /* restoring against no rules would rewrite (wipe) the file */
        ec_set_err(err, errlen, "latch file '%s': add the rules before the latch file", path);
        return EC_ESTATE;
    }
    /* never through a symlink, never anything but a regular file: the image is written over the
     * file's first bytes, so a link (planted, or a typo) would have had another file overwritten */
    struct stat before;
    int existed = lstat(path, &before) == 0;
    if (existed && !S_ISREG(before.st_mode)) {
        ec_set_err(err, errlen, "latch file '%s' is not a regular file (a symlink or a device): refused", path);
        return EC_EIO;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) {
        ec_set_err(err, errlen, "latch file '%s': %s", path, strerror(errno));
        return EC_EIO;
    }
    /* one core per latch file: a second controller on the station would rewrite the first one's
     * latched trips out of the file (the lock is the kernel's: a killed process releases it) */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        ec_set_err(err, errlen, "latch file '%s' is held by another core (another controller on this station?)%s%s",
                   path, e == EWOULDBLOCK ? "" : ": ", e == EWOULDBLOCK ? "" : strerror(e));
        return e == EWOULDBLOCK ? EC_ESTATE : EC_EIO;
    }
    struct stat st;
    int short_file = 0;
    if (fstat(fd, &st) == 0) {
        short_file = existed && (size_t)st.st_size < sizeof(latch_image);
    }
    if (fstat(fd, &st) != 0 || ((size_t)st.st_size < sizeof(latch_image) &&
                                ftruncate(fd, (off_t)sizeof(latch_image)) != 0)) {
        ec_set_err(err, errlen, "latch file '%s': cannot size it: %s", path, strerror(errno));
        close(fd);
        return EC_EIO;
    }
    void *map = mmap(NULL, sizeof(latch_image), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        ec_set_err(err, errlen, "latch file '%s': cannot map it: %s", path, strerror(errno));
        close(fd);
        return EC_EIO;
    }
    struct latch_file *lf = calloc(1, sizeof *lf);
    if (lf == NULL) {
        munmap(map, sizeof(latch_image));
        close(fd);
        ec_set_err(err, errlen, "out of memory");
        return EC_ENOMEM;
    }
    lf->img = map;
    lf->fd = fd;
    latch_image *img = lf->img;
    uint64_t hash = rules_hash(c);
    int restored = 0;
    int bad = short_file ? EC_LATCH_SHORT
              : !existed ? 0
              : img->magic != LATCH_MAGIC || img->version != LATCH_VERSION ? EC_LATCH_HEADER
              : img->crc != latch_crc(img) ? EC_LATCH_CHECKSUM
              : 0;
    if (bad) { /* cannot be trusted: fail safe, every latchable rule tripped, and say why */
        for (int i = 0; i < c->n_rules; i++) {
            if (c->rules[i].cfg.latch) {
                c->rules[i].tripped = 1;
                restored++;
                push_event(c, EC_EV_TRIP, EC_EVF_RESTORED | EC_EVF_LATCH_BAD, i, -1, c->rules[i].cfg.channel, bad,
                           0, NAN, c->rules[i].cfg.threshold);
                c->first_out = c->first_out < 0 ? i : c->first_out;
            }
        }
    } else if (img->magic == LATCH_MAGIC && img->version == LATCH_VERSION) {
        int any = img->core_fault != 0;
        for (int i = 0; i < EC_MAX_RULES; i++) {
            any |= img->tripped[i] != 0;
        }
        for (int i = 0; i < c->n_rules; i++) {
            int was = img->rules_hash == hash ? img->tripped[i] != 0 : any;
            if (was && c->rules[i].cfg.latch) {
                c->rules[i].tripped = 1;
                restored++;
                push_event(c, EC_EV_TRIP, EC_EVF_RESTORED, i, -1, c->rules[i].cfg.channel, 0, 0, NAN,
                           c->rules[i].cfg.threshold);
            }
        }
        if (img->rules_hash == hash) {
            c->core_fault = img->core_fault;
            if (c->core_fault) { /* say so, like a restored trip: outputs are refused for this reason */
                push_event(c, EC_EV_CORE_FAULT, EC_EVF_RESTORED | EC_EVF_CORE_FAULT, -1, -1, -1, (int)c->core_fault,
                           0, 0, 0);
            }
            if (img->first_out >= 0 && img->first_out < c->n_rules && c->rules[img->first_out].tripped) {
                c->first_out = img->first_out;
            }
        }
        if (restored > 0 && c->first_out < 0) {
            for (int i = 0; i < c->n_rules && c->first_out < 0; i++) {
                c->first_out = c->rules[i].tripped ? i : -1;
            }
        }
    }
    memset(img, 0, sizeof *img);
    img->magic = LATCH_MAGIC;
    img->version = LATCH_VERSION;
    img->rules_hash = hash;
    img->first_out = -1;
    img->crc = latch_crc(img);
    c->latch = lf;
    latch_sync(c);
    msync(img, sizeof *img, MS_SYNC);
    return restored;
}

/* ---------- life cycle ---------- */

int ec_core_new(const ec_core_cfg *cfg, ec_core **out_core, char *err, size_t errlen)
{
    if (cfg == NULL || out_core == NULL) {
        ec_set_err(err, errlen, "cfg and out must not be NULL");
        return EC_EINVAL;
    }
    *out_core = NULL;
    if (!(cfg->period_ms >= 0.1 && cfg->period_ms <= 1000.0)) {
        ec_set_err(err, errlen, "period_ms %g outside 0.1 .. 1000", cfg->period_ms);
        return EC_ERANGE;
    }
    if (!is_pow2_at_least16(cfg->sample_ring) || cfg->sample_ring > (1u << 20)) {
        ec_set_err(err, errlen, "sample_ring %u must be a power of two from 16 to 1048576", cfg->sample_ring);
        return EC_EINVAL;
    }
    if (!is_pow2_at_least16(cfg->event_ring) || cfg->event_ring > (1u << 20)) {
        ec_set_err(err, errlen, "event_ring %u must be a power of two from 16 to 1048576", cfg->event_ring);
        return EC_EINVAL;
    }
    if (cfg->rt_priority < 0 || cfg->rt_priority > 99) {
        ec_set_err(err, errlen, "rt_priority %d outside 0 .. 99", cfg->rt_priority);
        return EC_ERANGE;
    }
    if (cfg->reset_channel < -1 || cfg->reset_channel >= EC_MAX_CHANNELS || cfg->watchdog_output < -1 ||
        cfg->watchdog_output >= EC_MAX_OUTPUTS) {
        ec_set_err(err, errlen, "reset_channel / watchdog_output out of range");
        return EC_EINVAL;
    }
    if (cfg->watchdog_feedback < -1 || cfg->watchdog_feedback >= EC_MAX_CHANNELS ||
        (cfg->watchdog_feedback >= 0 && cfg->watchdog_output < 0)) {
        ec_set_err(err, errlen, "watchdog_feedback %d: a declared channel, and only with a watchdog_output",
                   cfg->watchdog_feedback);
        return EC_EINVAL;
    }
    if (!(cfg->max_tick_gap_ms >= 0 && cfg->max_tick_gap_ms < 1e9) ||
        (cfg->max_tick_gap_ms > 0 && cfg->max_tick_gap_ms < cfg->period_ms)) {
        ec_set_err(err, errlen, "max_tick_gap_ms %g must be 0 (off) or at least the period (%g ms)",
                   cfg->max_tick_gap_ms, cfg->period_ms);
        return EC_ERANGE;
    }
    if (cfg->allow_remote_reset != 0 && cfg->allow_remote_reset != 1) {
        ec_set_err(err, errlen, "allow_remote_reset must be 0 or 1");
        return EC_EINVAL;
    }
    ec_core *c = calloc(1, sizeof *c);
    if (c == NULL) {
        ec_set_err(err, errlen, "out of memory");
        return EC_ENOMEM;
    }
    c->samples = calloc(cfg->sample_ring, sizeof(ec_sample));
    c->events = calloc(cfg->event_ring, sizeof(ec_event));
    if (c->samples == NULL || c->events == NULL) {
        free(c->samples);
        free(c->events);
        free(c);
        ec_set_err(err, errlen, "out of memory for the rings");
        return EC_ENOMEM;
    }
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setprotocol(&ma, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&c->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    c->cfg = *cfg;
    c->period_ns = (int64_t)llround(cfg->period_ms * NS_PER_MS);
    c->sample_mask = cfg->sample_ring - 1;
    c->event_mask = cfg->event_ring - 1;
    c->first_out = -1;
    c->reset_since = -1;
    c->proof_since = -1;
    atomic_init(&c->running, 0);
    atomic_init(&c->s_head, 0);
    atomic_init(&c->s_tail, 0);
    *out_core = c;
    return EC_OK;
}

void ec_core_free(ec_core *c)
{
    if (c == NULL) {
        return;
    }
    ec_core_stop(c);
    if (c->stats.ticks > 0) {
        safe_all_outputs(c); /* inline ticks may have energised something */
    }
    for (int i = 0; i < c->n_drivers; i++) {
        if (c->drivers[i].ops->close != NULL) {
            c->drivers[i].ops->close(&c->drivers[i]);
        }
    }
    if (c->latch != NULL) {
        msync(c->latch->img, sizeof(latch_image), MS_SYNC);
        munmap(c->latch->img, sizeof(latch_image));
        close(c->latch->fd);
        free(c->latch);
    }
    pthread_mutex_destroy(&c->lock);
    free(c->samples);
    free(c->events);
    free(c);
}

int ec_core_add_driver(ec_core *c, const char *driver, const char *params, char *err, size_t errlen)
{
    int rc = check_configurable(c, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (driver == NULL || params == NULL) {
        ec_set_err(err, errlen, "driver and params must not be NULL");
        return EC_EINVAL;
    }
    if (c->n_drivers >= EC_MAX_DRIVERS) {
        ec_set_err(err, errlen, "at most %d drivers", EC_MAX_DRIVERS);
        return EC_EFULL;
    }
    static const ec_driver_ops *const known[] = {&ec_driver_sim, &ec_driver_gpiochip, &ec_driver_spidev};
    const ec_driver_ops *ops = NULL;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(known[i]->name, driver) == 0) {
            ops = known[i];
        }
    }
    if (ops == NULL) {
        ec_set_err(err, errlen, "unknown driver '%.40s' (expected sim, gpiochip or spidev)", driver);
        return EC_ENOTFOUND;
    }
    ec_driver *d = &c->drivers[c->n_drivers];
    memset(d, 0, sizeof *d);
    d->ops = ops;
    rc = ops->open(d, params, err, errlen);
    if (rc != EC_OK) {
        memset(d, 0, sizeof *d);
        return rc;
    }
    if (ops->read == NULL || ops->write == NULL) {
        if (ops->close != NULL) {
            ops->close(d);
        }
        memset(d, 0, sizeof *d);
        ec_set_err(err, errlen, "driver '%s' is incomplete", driver);
        return EC_EINVAL;
    }
    return c->n_drivers++;
}

int ec_core_add_channel(ec_core *c, const ec_channel_cfg *cfg, char *err, size_t errlen)
{
    int rc = begin_add(c, cfg, c ? c->n_channels : 0, EC_MAX_CHANNELS, "channel", cfg ? cfg->name : NULL, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (cfg->kind < EC_CH_ANALOG || cfg->kind > EC_CH_INJECTED) {
        ec_set_err(err, errlen, "channel '%s': unknown kind %d", cfg->name, cfg->kind);
        return EC_EINVAL;
    }
    if (cfg->kind != EC_CH_INJECTED) {
        if (cfg->driver < 0 || cfg->driver >= c->n_drivers) {
            ec_set_err(err, errlen, "channel '%s': driver %d not added", cfg->name, cfg->driver);
            return EC_ENOTFOUND;
        }
        const ec_driver *d = &c->drivers[cfg->driver];
        uint32_t n = cfg->kind == EC_CH_DIGITAL ? d->n_di : d->n_ai;
        if (cfg->input < 0 || (uint32_t)cfg->input >= n) {
            ec_set_err(err, errlen, "channel '%s': input %d outside the driver's %u %s inputs", cfg->name,
                       cfg->input, n, cfg->kind == EC_CH_DIGITAL ? "digital" : "analog");
            return EC_ERANGE;
        }
    }
    if (!isfinite(cfg->scale) || !isfinite(cfg->offset) || isnan(cfg->range_lo) || isnan(cfg->range_hi) ||
        !(cfg->range_lo < cfg->range_hi)) {
        ec_set_err(err, errlen, "channel '%s': scale/offset must be finite and range_lo < range_hi", cfg->name);
        return EC_EINVAL;
    }
    if (cfg->kind == EC_CH_THERMOCOUPLE) {
        if (ec_tc_range(cfg->tc_type, NULL, NULL, NULL, NULL) != EC_OK) {
            ec_set_err(err, errlen, "channel '%s': unknown thermocouple type '%c'", cfg->name,
                       cfg->tc_type >= 32 && cfg->tc_type < 127 ? cfg->tc_type : '?');
            return EC_EINVAL;
        }
        if (cfg->cj_channel >= c->n_channels || cfg->cj_channel < -1) {
            ec_set_err(err, errlen, "channel '%s': cold-junction channel %d must be declared before it",
                       cfg->name, cfg->cj_channel);
            return EC_ENOTFOUND;
        }
        if (cfg->cj_channel >= 0 && c->channels[cfg->cj_channel].cfg.kind == EC_CH_DIGITAL) {
            ec_set_err(err, errlen, "channel '%s': cold-junction channel is digital", cfg->name);
            return EC_EINVAL;
        }
        if (!isfinite(cfg->cj_fixed_c)) {
            ec_set_err(err, errlen, "channel '%s': cj_fixed_c must be finite", cfg->name);
            return EC_EINVAL;
        }
    }
    if (cfg->median_n < 1 || cfg->median_n > EC_MEDIAN_MAX || cfg->median_n % 2 == 0) {
        ec_set_err(err, errlen, "channel '%s': median_n %d must be odd, 1 .. %d", cfg->name, cfg->median_n,
                   EC_MEDIAN_MAX);
        return EC_ERANGE;
    }
    if (!(cfg->ema_tau_ms >= 0 && cfg->ema_tau_ms < 1e9) || !(cfg->max_age_ms >= 0 && cfg->max_age_ms < 1e12) ||
        !(cfg->rate_window_ms >= 0 && cfg->rate_window_ms < 1e9)) {
        ec_set_err(err, errlen, "channel '%s': ema_tau_ms, max_age_ms and rate_window_ms must be >= 0", cfg->name);
        return EC_ERANGE;
    }
    if (cfg->kind == EC_CH_INJECTED && cfg->max_age_ms <= 0) {
        ec_set_err(err, errlen, "channel '%s': an injected channel needs max_age_ms > 0", cfg->name);
        return EC_EINVAL;
    }
    for (int i = 0; i < c->n_channels; i++) {
        if (strncmp(c->channels[i].cfg.name, cfg->name, EC_NAME_LEN) == 0) {
            ec_set_err(err, errlen, "channel '%s' declared twice", cfg->name);
            return EC_EINVAL;
        }
    }
    chan *ch = &c->channels[c->n_channels];
    memset(ch, 0, sizeof *ch);
    ch->cfg = *cfg;
    ch->cfg.name[EC_NAME_LEN - 1] = '\0';
    ch->latest.value = NAN;
    ch->latest.status = EC_ST_NODATA;
    return c->n_channels++;
}

int ec_core_add_output(ec_core *c, const ec_output_cfg *cfg, char *err, size_t errlen)
{
    int rc = begin_add(c, cfg, c ? c->n_outputs : 0, EC_MAX_OUTPUTS, "output", cfg ? cfg->name : NULL, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (cfg->driver < 0 || cfg->driver >= c->n_drivers) {
        ec_set_err(err, errlen, "output '%s': driver %d not added", cfg->name, cfg->driver);
        return EC_ENOTFOUND;
    }
    if (cfg->line < 0 || (uint32_t)cfg->line >= c->drivers[cfg->driver].n_do) {
        ec_set_err(err, errlen, "output '%s': line %d outside the driver's %u outputs", cfg->name, cfg->line,
                   c->drivers[cfg->driver].n_do);
        return EC_ERANGE;
    }
    if (cfg->safe_level != 0 && cfg->safe_level != 1) {
        ec_set_err(err, errlen, "output '%s': safe_level must be 0 or 1", cfg->name);
        return EC_EINVAL;
    }
    if (!(cfg->max_on_ms >= 0 && cfg->max_on_ms < 1e12) ||
        !(cfg->duty_cycle_ms >= 1.0 && cfg->duty_cycle_ms <= 60000.0)) {
        ec_set_err(err, errlen, "output '%s': max_on_ms >= 0 and duty_cycle_ms 1 .. 60000 required", cfg->name);
        return EC_ERANGE;
    }
    for (int i = 0; i < c->n_outputs; i++) {
        if (strncmp(c->outputs[i].cfg.name, cfg->name, EC_NAME_LEN) == 0) {
            ec_set_err(err, errlen, "output '%s' declared twice", cfg->name);
            return EC_EINVAL;
        }
        if (c->outputs[i].cfg.driver == cfg->driver && c->outputs[i].cfg.line == cfg->line) {
            ec_set_err(err, errlen, "output '%s': line %d already used by '%s'", cfg->name, cfg->line,
                       c->outputs[i].cfg.name);
            return EC_EINVAL;
        }
    }
    out *o = &c->outputs[c->n_outputs];
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->cfg.name[EC_NAME_LEN - 1] = '\0';
    o->level = cfg->safe_level;
    return c->n_outputs++;
}

/* the keys of the two-sided kinds: DISCREPANCY names an output, AGREE a second channel */
static int check_pair_rule(ec_core *c, const ec_rule_cfg *cfg, char *err, size_t errlen)
{
    if (cfg->local_reset_only != 0 && cfg->local_reset_only != 1) {
        ec_set_err(err, errlen, "rule '%s': local_reset_only must be 0 or 1", cfg->name);
        return EC_EINVAL;
    }
    if (cfg->kind == EC_RULE_DISCREPANCY) {
        if (cfg->output < 0 || cfg->output >= c->n_outputs) {
            ec_set_err(err, errlen, "rule '%s': a discrepancy rule needs its output (output %d not declared)",
                       cfg->name, cfg->output);
            return EC_ENOTFOUND;
        }
        if (cfg->output == c->cfg.watchdog_output) {
            ec_set_err(err, errlen, "rule '%s': output '%s' is the watchdog line (the proof test checks it)",
                       cfg->name, c->outputs[cfg->output].cfg.name);
            return EC_EINVAL;
        }
        if (cfg->channel >= 0 && cfg->channel < c->n_channels &&
            c->channels[cfg->channel].cfg.kind == EC_CH_DIGITAL && cfg->threshold != 0.0) {
            ec_set_err(err, errlen, "rule '%s': digital feedback '%s' takes no threshold (1 = on)", cfg->name,
                       c->channels[cfg->channel].cfg.name);
            return EC_EINVAL;
        }
    }
    if (cfg->kind == EC_RULE_AGREE) {
        if (cfg->channel2 < 0 || cfg->channel2 >= c->n_channels) {
            ec_set_err(err, errlen, "rule '%s': an agree rule needs its second channel (channel2 %d not declared)",
                       cfg->name, cfg->channel2);
            return EC_ENOTFOUND;
        }
        if (cfg->channel2 == cfg->channel) {
            ec_set_err(err, errlen, "rule '%s': channel and channel2 are the same channel", cfg->name);
            return EC_EINVAL;
        }
        if (c->channels[cfg->channel2].cfg.kind == EC_CH_DIGITAL ||
            (cfg->channel >= 0 && cfg->channel < c->n_channels &&
             c->channels[cfg->channel].cfg.kind == EC_CH_DIGITAL)) {
            ec_set_err(err, errlen, "rule '%s': an agree rule compares two values, not digital levels", cfg->name);
            return EC_EINVAL;
        }
        if (!(cfg->threshold > 0 && isfinite(cfg->threshold)) || !(cfg->hysteresis < cfg->threshold)) {
            ec_set_err(err, errlen, "rule '%s': the band (threshold) %g must be > 0 and above the hysteresis %g",
                       cfg->name, cfg->threshold, cfg->hysteresis);
            return EC_ERANGE;
        }
    }
    return EC_OK;
}

int ec_core_add_rule(ec_core *c, const ec_rule_cfg *cfg, char *err, size_t errlen)
{
    int rc = begin_add(c, cfg, c ? c->n_rules : 0, EC_MAX_RULES, "rule", cfg ? cfg->name : NULL, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (cfg->kind < EC_RULE_HIGH || cfg->kind > EC_RULE_AGREE) {
        ec_set_err(err, errlen, "rule '%s': unknown kind %d", cfg->name, cfg->kind);
        return EC_EINVAL;
    }
    rc = check_pair_rule(c, cfg, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (cfg->kind == EC_RULE_DEADMAN) {
        if (cfg->channel != -1) {
            ec_set_err(err, errlen, "rule '%s': a dead-man rule takes no channel", cfg->name);
            return EC_EINVAL;
        }
        if (!(cfg->threshold >= 1.0 && cfg->threshold <= 3600000.0)) {
            ec_set_err(err, errlen, "rule '%s': dead-man timeout %g ms outside 1 .. 3600000", cfg->name,
                       cfg->threshold);
            return EC_ERANGE;
        }
    } else {
        if (cfg->channel < 0 || cfg->channel >= c->n_channels) {
            ec_set_err(err, errlen, "rule '%s': channel %d not declared", cfg->name, cfg->channel);
            return EC_ENOTFOUND;
        }
        int digital = c->channels[cfg->channel].cfg.kind == EC_CH_DIGITAL;
        if (cfg->kind == EC_RULE_DIGITAL && (!digital || (cfg->threshold != 0.0 && cfg->threshold != 1.0))) {
            ec_set_err(err, errlen, "rule '%s': a digital rule needs a digital channel and a level 0 or 1",
                       cfg->name);
            return EC_EINVAL;
        }
        if ((cfg->kind == EC_RULE_RATE_HIGH || cfg->kind == EC_RULE_RATE_LOW) &&
            (digital || !(c->channels[cfg->channel].cfg.rate_window_ms > 0))) {
            ec_set_err(err, errlen, "rule '%s': channel '%s' measures no rate (digital, or rate_window_ms is 0)", cfg->name,
                       c->channels[cfg->channel].cfg.name);
            return EC_EINVAL;
        }
        if (!isfinite(cfg->threshold)) {
            ec_set_err(err, errlen, "rule '%s': threshold must be finite", cfg->name);
            return EC_EINVAL;
        }
        if ((cfg->kind == EC_RULE_HIGH || cfg->kind == EC_RULE_LOW ||
             (cfg->kind == EC_RULE_DISCREPANCY && !digital)) &&
            (cfg->threshold < c->channels[cfg->channel].cfg.range_lo ||
             cfg->threshold > c->channels[cfg->channel].cfg.range_hi)) {
            ec_set_err(err, errlen, "rule '%s': threshold %g outside the channel's range %g .. %g", cfg->name,
                       cfg->threshold, c->channels[cfg->channel].cfg.range_lo,
                       c->channels[cfg->channel].cfg.range_hi);
            return EC_ERANGE;
        }
    }
    if (!(cfg->hysteresis >= 0 && cfg->hysteresis < 1e12) || !(cfg->debounce_ms >= 0 && cfg->debounce_ms < 1e9)) {
        ec_set_err(err, errlen, "rule '%s': hysteresis and debounce_ms must be >= 0", cfg->name);
        return EC_ERANGE;
    }
    if (cfg->action == 0) {
        ec_set_err(err, errlen, "rule '%s': no outputs in its action", cfg->name);
        return EC_EINVAL;
    }
    if (c->n_outputs < 64 && (cfg->action >> c->n_outputs) != 0) {
        ec_set_err(err, errlen, "rule '%s': action names an output not declared", cfg->name);
        return EC_ENOTFOUND;
    }
    for (int i = 0; i < c->n_rules; i++) {
        if (strncmp(c->rules[i].cfg.name, cfg->name, EC_NAME_LEN) == 0) {
            ec_set_err(err, errlen, "rule '%s' declared twice", cfg->name);
            return EC_EINVAL;
        }
    }
    if (c->latch != NULL) {
        ec_set_err(err, errlen, "rule '%s': the latch file is already set: add every rule before it", cfg->name);
        return EC_ESTATE;
    }
    /* the ring's reserve (min(rules + 8, ring / 2)) must hold a trip of every rule plus the core faults,
     * or the guarantee that no latched trip is dropped does not hold */
    if ((uint64_t)c->n_rules + 1 + 8 > ((uint64_t)c->event_mask + 1) / 2) {
        ec_set_err(err, errlen, "rule '%s': event_ring %u is too small for %d rules: it must be at least "
                   "2 * (rules + 8) so that no trip can be dropped", cfg->name, c->event_mask + 1, c->n_rules + 1);
        return EC_EFULL;
    }
    rule *r = &c->rules[c->n_rules];
    memset(r, 0, sizeof *r);
    memcpy(&r->cfg, cfg, sizeof *cfg); /* byte for byte: the latch file's rule-set hash reads it whole */
    size_t name_len = strnlen(r->cfg.name, EC_NAME_LEN - 1);
    memset(r->cfg.name + name_len, 0, EC_NAME_LEN - name_len);
    r->cond_since = NOT_HOLDING;
    r->last_level = -1;
    r->threshold = cfg->threshold;
    return c->n_rules++;
}

int ec_core_add_permissive(ec_core *c, const ec_permissive_cfg *cfg, char *err, size_t errlen)
{
    int rc = begin_add(c, cfg, c ? c->n_perms : 0, EC_MAX_PERMISSIVES, "permissive term", NULL, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (cfg->output < 0 || cfg->output >= c->n_outputs || cfg->channel < 0 || cfg->channel >= c->n_channels) {
        ec_set_err(err, errlen, "permissive: output %d or channel %d not declared", cfg->output, cfg->channel);
        return EC_ENOTFOUND;
    }
    if (cfg->cmp < EC_CMP_LT || cfg->cmp > EC_CMP_IN || !isfinite(cfg->value) ||
        (cfg->cmp == EC_CMP_IN && !(isfinite(cfg->value2) && cfg->value <= cfg->value2))) {
        ec_set_err(err, errlen, "permissive on '%s': bad comparison or bounds", c->outputs[cfg->output].cfg.name);
        return EC_EINVAL;
    }
    c->perms[c->n_perms] = *cfg;
    return c->n_perms++;
}

/* ---------- the tick ---------- */

static double median_of(const double *v, int n)
{
    double tmp[EC_MEDIAN_MAX];
    memcpy(tmp, v, (size_t)n * sizeof(double));
    for (int i = 1; i < n; i++) { /* insertion sort: n <= 9 */
        double x = tmp[i];
        int j = i - 1;
        while (j >= 0 && tmp[j] > x) {
            tmp[j + 1] = tmp[j];
            j--;
        }
        tmp[j + 1] = x;
    }
    return n % 2 ? tmp[n / 2] : 0.5 * (tmp[n / 2 - 1] + tmp[n / 2]);
}

static void update_rate(chan *ch, int64_t now, double v)
{
    int64_t step = (int64_t)(ch->cfg.rate_window_ms * NS_PER_MS / (RATE_SLOTS - 1));
    if (step < 1) {
        step = 1;
    }
    int last = (ch->rate_pos + RATE_SLOTS - 1) % RATE_SLOTS;
    if (ch->rate_n == 0 || elapsed(now, ch->rate_t[last]) >= step) {
        ch->rate_v[ch->rate_pos] = v;
        ch->rate_t[ch->rate_pos] = now;
        ch->rate_pos = (ch->rate_pos + 1) % RATE_SLOTS;
        if (ch->rate_n < RATE_SLOTS) {
            ch->rate_n++;
        }
    } else if (ch->rate_t[last] == now) {
        ch->rate_v[last] = v; /* a same-stamp sample replaces the one it supersedes */
    }
    int oldest = ch->rate_n < RATE_SLOTS ? 0 : ch->rate_pos;
    int64_t span = elapsed(now, ch->rate_t[oldest]);
    if (ch->rate_n >= 2 && span >= step * (RATE_SLOTS - 1) / 2 && span > 0) {
        ch->rate = (v - ch->rate_v[oldest]) * 60e9 / (double)span;
        ch->rate_valid = 1;
    } else {
        ch->rate_valid = 0;
    }
}

/* a faulted sample restarts the median and the EMA, but keeps the rate history: clearing it
 * left the rate unknown (= not tripped) for half the window after every one-tick fault, so a
 * fault every 2 s blinded a 5 s rate rule; the history spans the fault and stays valid */
static void reset_filter(chan *ch)
{
    ch->has_filtered = 0;
    ch->med_count = 0;
    ch->med_pos = 0;
    ch->ema_init = 0;
}

/* median-of-N (a majority vote on a digital channel), then EMA and rate: one new sample, or with
 * `replace` a corrected value for the last sample (an injected value with the same stamp) */
static double filter_sample(chan *ch, int64_t t, double v, int replace)
{
    const ec_channel_cfg *cfg = &ch->cfg;
    if (cfg->median_n > 1) {
        if (replace && ch->med_count > 0) {
            ch->med[(ch->med_pos + cfg->median_n - 1) % cfg->median_n] = v;
        } else {
            ch->med[ch->med_pos] = v;
            ch->med_pos = (ch->med_pos + 1) % cfg->median_n;
            if (ch->med_count < cfg->median_n) {
                ch->med_count++;
            }
        }
        v = median_of(ch->med, ch->med_count);
    }
    if (cfg->kind == EC_CH_DIGITAL) {
        return v >= 0.5 ? 1.0 : 0.0;
    }
    if (cfg->ema_tau_ms > 0) {
        if (!ch->ema_init) {
            ch->ema = v;
            ch->ema_init = 1;
            ch->ema_prev = v;
            ch->ema_alpha = 1.0;
        } else if (replace) {
            ch->ema = ch->ema_prev + ch->ema_alpha * (v - ch->ema_prev);
        } else {
            double dt_ms = (double)elapsed(t, ch->ema_t) / NS_PER_MS;
            double alpha = dt_ms <= 0 ? 0.0 : 1.0 - exp(-dt_ms / cfg->ema_tau_ms);
            ch->ema_prev = ch->ema;
            ch->ema_alpha = alpha;
            ch->ema += alpha * (v - ch->ema);
        }
        ch->ema_t = t;
        v = ch->ema;
    }
    if (cfg->rate_window_ms > 0) {
        update_rate(ch, t, v);
    }
    return v;
}

static void update_channel(ec_core *c, chan *ch, int64_t now)
{
    const ec_channel_cfg *cfg = &ch->cfg;
    double v = NAN;
    uint32_t st = EC_ST_OK;
    int64_t t = now;
    if (cfg->kind == EC_CH_INJECTED) {
        if (!ch->inj_has) {
            st = EC_ST_NODATA;
            t = c->start_t; /* grace of max_age from start, then STALE */
        } else {
            v = ch->inj_value;
            st = ch->inj_status & (EC_ST_FAULT | EC_ST_RANGE);
            t = ch->inj_t;
        }
    } else {
        const ec_driver *d = &c->drivers[cfg->driver];
        if (cfg->kind == EC_CH_DIGITAL) {
            v = (double)((d->di[cfg->input] ? 1 : 0) ^ (cfg->invert ? 1 : 0));
            st = d->di_status[cfg->input];
        } else {
            v = d->ai[cfg->input] * cfg->scale + cfg->offset;
            st = d->ai_status[cfg->input];
            if (d->ai_t_ns[cfg->input] != 0) {
                t = d->ai_t_ns[cfg->input];
            }
        }
    }
    if (cfg->kind == EC_CH_THERMOCOUPLE && !(st & EC_ST_FAULT) && !(st & EC_ST_NODATA)) {
        double cj = cfg->cj_fixed_c;
        if (cfg->cj_channel >= 0) {
            const ec_value *cjv = &c->channels[cfg->cj_channel].latest;
            cj = cjv->value;
            if (cjv->status & (EC_ST_FAULT | EC_ST_RANGE | EC_ST_NODATA)) {
                st |= EC_ST_FAULT; /* an unknown cold junction makes the reading unknown */
            }
            st |= cjv->status & EC_ST_STALE;
        }
        double tc = NAN;
        if (!(st & EC_ST_FAULT) && ec_tc_compensated(cfg->tc_type, v, cj, &tc) != EC_OK) {
            st |= EC_ST_RANGE;
            tc = NAN;
        }
        v = tc;
    }
    if (!isfinite(v) && !(st & (EC_ST_FAULT | EC_ST_NODATA))) {
        st |= EC_ST_RANGE;
    }
    if (cfg->max_age_ms > 0 && (double)elapsed(now, t) > cfg->max_age_ms * NS_PER_MS) {
        st |= EC_ST_STALE;
    }
    if (st & (EC_ST_FAULT | EC_ST_NODATA) || !isfinite(v)) {
        /* a faulted channel is never a number that looks fine */
        reset_filter(ch);
        ch->latest.value = NAN;
        ch->latest.status = st;
        ch->latest.t_ns = t;
        return;
    }
    /* the filters take each sample once: a held value (an injected node reading, a converter
     * polled every 100 ms) repeated every tick would fill the median with copies of itself */
    int fresh_inject = cfg->kind == EC_CH_INJECTED && ch->inj_seq != ch->fed_seq;
    if (!ch->has_filtered || t != ch->last_t || fresh_inject) {
        /* an injected value stamped like the last one (the plant clock stood still) supersedes it */
        int replace = ch->has_filtered && t == ch->last_t;
        ch->last_t = t;
        ch->fed_seq = ch->inj_seq;
        ch->filtered = filter_sample(ch, t, v, replace);
        ch->has_filtered = 1;
    }
    v = ch->filtered;
    /* range is judged on the filtered value: one spike the median rejects is not a broken sensor */
    if (cfg->kind != EC_CH_DIGITAL && (v < cfg->range_lo || v > cfg->range_hi)) {
        st |= EC_ST_RANGE;
    }
    ch->latest.value = v;
    ch->latest.status = st;
    ch->latest.t_ns = t;
}

/* A value a threshold rule cannot trust: faulted, stale, missing, or outside the sensor's valid
 * range (a 4-20 mA loop reading 0 mA is a broken wire, not a safe -25 %LEL). Such a value
 * makes every threshold rule on it trip: it cannot show that the plant is safe. */
static int value_bad(uint32_t st)
{
    return (st & (EC_ST_FAULT | EC_ST_STALE | EC_ST_NODATA | EC_ST_RANGE)) != 0;
}

/* DISCREPANCY and AGREE: a bad value on either side cannot show the two agree, so it trips
 * (whatever the output does: a broken feedback under burst fire still trips after debounce_ms).
 * With a good feedback, a discrepancy's count restarts whenever the written level changes
 * (cond_since = NOT_HOLDING here, evaluate_rules starts it again this tick): only a level held
 * for debounce_ms is judged. */
static int pair_condition(ec_core *c, rule *r, int *sensor_bad)
{
    const ec_rule_cfg *cfg = &r->cfg;
    const ec_value *a = &c->channels[cfg->channel].latest;
    if (cfg->kind == EC_RULE_AGREE) {
        const ec_value *b = &c->channels[cfg->channel2].latest;
        r->value = a->value - b->value;
        if (value_bad(a->status) || value_bad(b->status) || isnan(r->value)) {
            *sensor_bad = 1;
            return 1;
        }
        int held = r->tripped || r->cond_since != NOT_HOLDING;
        return fabs(r->value) > (held ? r->threshold - cfg->hysteresis : r->threshold);
    }
    const out *o = &c->outputs[cfg->output];
    int level_changed = o->level != r->last_level;
    r->last_level = o->level;
    r->value = a->value;
    if (value_bad(a->status) || isnan(a->value)) {
        *sensor_bad = 1;
        return 1;
    }
    if (level_changed) {
        r->cond_since = NOT_HOLDING;
    }
    if (c->channels[cfg->channel].cfg.kind == EC_CH_DIGITAL) {
        r->fb_on = a->value >= 0.5;
    } else {
        r->fb_on = a->value > (r->fb_on ? cfg->threshold - cfg->hysteresis : cfg->threshold);
    }
    int expected_on = o->level != o->cfg.safe_level;
    return r->fb_on != expected_on;
}

/* what a rule's events carry besides its channel and value: the output compared, the written
 * level or the second channel */
static int rule_event_output(const rule *r) { return r->cfg.kind == EC_RULE_DISCREPANCY ? r->cfg.output : -1; }

static int rule_event_aux(const rule *r)
{
    if (r->cfg.kind == EC_RULE_DISCREPANCY) {
        return r->last_level;
    }
    return r->cfg.kind == EC_RULE_AGREE ? r->cfg.channel2 : 0;
}

/* the rule's condition this tick, with hysteresis relative to whether it is already tripped */
static int rule_condition(ec_core *c, rule *r, int64_t now, int *sensor_bad)
{
    *sensor_bad = 0;
    const ec_rule_cfg *cfg = &r->cfg;
    r->evaluated = 1;
    if (cfg->kind == EC_RULE_DEADMAN) {
        r->value = (double)elapsed(now, c->heartbeat_t) / NS_PER_MS;
        return r->value > cfg->threshold;
    }
    const chan *ch = &c->channels[cfg->channel];
    const ec_value *val = &ch->latest;
    int held = r->tripped || r->cond_since != NOT_HOLDING;
    r->value = val->value;
    /* only an injected channel waiting for its first value has a grace (max_age_ms from start,
     * after which it reads STALE|NODATA); a driver channel without data is a bad sensor */
    int grace = ch->cfg.kind == EC_CH_INJECTED && val->status == EC_ST_NODATA;
    r->evaluated = !grace; /* a clear condition in the grace is no evidence: it may not allow a reset */
    if (cfg->kind == EC_RULE_DISCREPANCY || cfg->kind == EC_RULE_AGREE) {
        return pair_condition(c, r, sensor_bad);
    }
    switch (cfg->kind) {
    case EC_RULE_FAULT:
        return (val->status & (EC_ST_FAULT | EC_ST_RANGE)) != 0;
    case EC_RULE_STALE:
        return !grace && (val->status & (EC_ST_STALE | EC_ST_NODATA)) != 0;
    default:
        break;
    }
    if (grace) {
        return 0;
    }
    if (value_bad(val->status) || isnan(val->value)) {
        *sensor_bad = 1; /* cannot show the condition is safe: fail safe */
        return 1;
    }
    double v = val->value;
    switch (cfg->kind) {
    case EC_RULE_HIGH:
        return held ? v > r->threshold - cfg->hysteresis : v > r->threshold;
    case EC_RULE_LOW:
        return held ? v < r->threshold + cfg->hysteresis : v < r->threshold;
    case EC_RULE_RATE_HIGH:
        r->value = ch->rate;
        if (!ch->rate_valid) {
            return r->tripped;
        }
        return held ? ch->rate > cfg->threshold - cfg->hysteresis : ch->rate > cfg->threshold;
    case EC_RULE_RATE_LOW:
        r->value = ch->rate;
        if (!ch->rate_valid) {
            return r->tripped;
        }
        return held ? ch->rate < cfg->threshold + cfg->hysteresis : ch->rate < cfg->threshold;
    case EC_RULE_DIGITAL:
        return (v >= 0.5 ? 1.0 : 0.0) != cfg->threshold;
    default:
        return 1;
    }
}

static int any_tripped(const ec_core *c)
{
    for (int i = 0; i < c->n_rules; i++) {
        if (c->rules[i].tripped) {
            return 1;
        }
    }
    return 0;
}

static int is_sensor_rule(const rule *r) { return r->cfg.kind == EC_RULE_FAULT || r->cfg.kind == EC_RULE_STALE; }

/* The first-out among the rules that tripped in the same tick: the first in order, unless it
 * tripped only because its value is bad and a sensor-fault rule (FAULT/STALE) tripped with it:
 * the broken sensor is the root cause (on the same channel first, else any), not the threshold
 * rule failing safe on its NaN. */
static int root_cause(const ec_core *c, const int *newly, int n_new)
{
    const rule *first = &c->rules[newly[0]];
    if (!first->sensor_bad || is_sensor_rule(first)) {
        return newly[0];
    }
    int any = -1;
    for (int k = 0; k < n_new; k++) {
        const rule *r = &c->rules[newly[k]];
        if (is_sensor_rule(r)) {
            if (r->cfg.channel == first->cfg.channel) {
                return newly[k];
            }
            any = any < 0 ? newly[k] : any;
        }
    }
    return any >= 0 ? any : newly[0];
}

static void evaluate_rules(ec_core *c, int64_t now)
{
    int newly[EC_MAX_RULES];
    int n_new = 0;
    for (int i = 0; i < c->n_rules; i++) {
        rule *r = &c->rules[i];
        int bad = 0;
        int cond = rule_condition(c, r, now, &bad);
        r->cond = cond;
        r->sensor_bad = bad;
        if (cond) {
            if (r->cond_since == NOT_HOLDING) {
                r->cond_since = now;
            }
            if (!r->tripped && (double)elapsed(now, r->cond_since) >= r->cfg.debounce_ms * NS_PER_MS) {
                r->tripped = 1;
                r->tripped_at = now;
                newly[n_new++] = i;
            }
        } else {
            r->cond_since = NOT_HOLDING;
            if (r->tripped && !r->cfg.latch) {
                r->tripped = 0;
                push_event(c, EC_EV_CLEAR, 0, i, -1, r->cfg.channel, 0, 0, r->value, r->threshold);
            }
        }
    }
    /* a cascade is running if a rule tripped before this tick is still tripped, or a core fault
     * is latched (it was the cascade's first-out): then none of this tick's trips is a first-out */
    int cascade = c->core_fault != 0;
    for (int i = 0, k = 0; i < c->n_rules && !cascade; i++) {
        if (k < n_new && newly[k] == i) {
            k++;
        } else {
            cascade = c->rules[i].tripped;
        }
    }
    int fo = !cascade && n_new > 0 ? root_cause(c, newly, n_new) : -1;
    if (fo >= 0) {
        c->first_out = fo;
    }
    for (int k = 0; k < n_new; k++) {
        rule *r = &c->rules[newly[k]];
        int flags = (r->sensor_bad ? EC_EVF_SENSOR_BAD : 0) | (newly[k] == fo ? EC_EVF_FIRST_OUT : 0);
        push_event(c, EC_EV_TRIP, flags, newly[k], rule_event_output(r), r->cfg.channel, rule_event_aux(r), 0,
                   r->value, r->threshold);
    }
    if (!any_tripped(c)) {
        c->first_out = -1;
    }
}

/* reset latched rules whose condition was evaluated this run on valid, fresh data and found clear
 * (a trip restored from the latch file, or a rule in its channel's start-up grace, has no such
 * evaluation yet); returns EC_OK, or EC_ECONDITION if one still holds or was not yet evaluated */
static int do_reset(ec_core *c, int which, int flags)
{
    int rc = EC_OK;
    for (int i = 0; i < c->n_rules; i++) {
        rule *r = &c->rules[i];
        if ((which >= 0 && i != which) || !r->tripped) {
            continue;
        }
        if ((flags & EC_EVF_REMOTE) && r->cfg.local_reset_only) {
            push_event(c, EC_EV_RESET_REFUSED, flags, i, -1, r->cfg.channel, 0, 0, r->value, r->threshold);
            rc = EC_EREFUSED;
            continue;
        }
        if (r->cond || !r->evaluated) {
            push_event(c, EC_EV_RESET_REFUSED, flags, i, -1, r->cfg.channel, 0, 0, r->value, r->threshold);
            rc = EC_ECONDITION;
            continue;
        }
        r->tripped = 0;
        push_event(c, EC_EV_RESET, flags, i, -1, r->cfg.channel, 0, 0, r->value, r->threshold);
    }
    if (flags & EC_EVF_REMOTE) { /* core faults need a local reset (ec_core_reset_remote refused earlier) */
        if (!any_tripped(c)) {
            c->first_out = -1;
        }
        return rc;
    }
    watchdog_proof_rearm(c);
    uint32_t gone = c->core_fault & ~c->fault_active;
    if (gone) {
        c->core_fault &= ~gone;
        push_event(c, EC_EV_RESET, flags | EC_EVF_CORE_FAULT, -1, -1, -1, (int)gone, 0, 0, 0);
    }
    if (c->core_fault & c->fault_active) {
        push_event(c, EC_EV_RESET_REFUSED, flags | EC_EVF_CORE_FAULT, -1, -1, -1, (int)c->core_fault, 0, 0, 0);
        rc = EC_ECONDITION;
    }
    if (!any_tripped(c)) {
        c->first_out = -1;
    }
    return rc;
}

/* ---------- the watchdog proof test ----------
 * A watchdog relay that is welded in, or wired past, would be assumed and never proved. With a
 * feedback contact the core proves it at start-up (and after a local reset of its fault): the
 * line is held still until the relay is seen dropped, then toggled until it is seen energised.
 * Until then every output is held safe. Which clock bounds each step: a started core (real
 * hardware, or the rig's plant process) uses wall time (CLOCK_MONOTONIC), because the relay is
 * hardware and drops on wall time whatever the plant clock's scale (600x in the HIL runs: 3 s of
 * plant time would be 5 ms of wall); a core stepped by run_ticks (lockstep, tests) uses the core
 * clock, since there the rig steps the relay in plant time together with the core. */
enum { PROOF_HOLD = 0, PROOF_TOGGLE = 1, PROOF_DONE = 2 };

static int proof_enabled(const ec_core *c) { return c->cfg.watchdog_output >= 0 && c->cfg.watchdog_feedback >= 0; }

static int proof_pending(const ec_core *c) { return proof_enabled(c) && c->proof_state != PROOF_DONE; }

static void watchdog_proof_step(ec_core *c, int64_t now)
{
    if (!proof_pending(c) || (c->core_fault & EC_FAULT_WATCHDOG_PROOF)) {
        return;
    }
    if (c->proof_wall) {
        now = ec_monotonic_ns();
    }
    if (c->proof_since < 0) {
        c->proof_since = now;
    }
    const ec_value *fb = &c->channels[c->cfg.watchdog_feedback].latest;
    int ok = !value_bad(fb->status) && !isnan(fb->value);
    int want = c->proof_state == PROOF_HOLD ? 0 : 1;
    /* each level must hold EC_WATCHDOG_PROOF_STEADY ticks in a row: a feedback that flickers whatever the
     * line does (a loose wire, a contact bouncing on vibration) proves nothing */
    c->proof_steady = ok && (fb->value >= 0.5) == want ? c->proof_steady + 1 : 0;
    if (c->proof_steady >= EC_WATCHDOG_PROOF_STEADY) {
        c->proof_state++;
        c->proof_since = now;
        c->proof_steady = 0;
        return;
    }
    if (elapsed(now, c->proof_since) > (int64_t)EC_WATCHDOG_PROOF_MS * 1000000LL) {
        c->fault_active |= EC_FAULT_WATCHDOG_PROOF;
    }
}

/* a local reset of the proof fault runs the test again (the fault's cause is then "gone") */
static void watchdog_proof_rearm(ec_core *c)
{
    if (c->core_fault & EC_FAULT_WATCHDOG_PROOF) {
        c->fault_active &= ~(uint32_t)EC_FAULT_WATCHDOG_PROOF;
        c->proof_state = PROOF_HOLD;
        c->proof_since = -1;
        c->proof_steady = 0;
    }
}

/* the wall gap between two sampler ticks: a tick late by more than max_tick_gap_ms means the
 * interlocks were not evaluated for that long (a stalled process, a swapping machine) */
static void check_tick_gap(ec_core *c, int64_t woke)
{
    c->fault_active &= ~(uint32_t)EC_FAULT_TICK_GAP;
    if (c->cfg.max_tick_gap_ms > 0 && c->last_tick_wall != 0 &&
        (double)elapsed(woke, c->last_tick_wall) > c->cfg.max_tick_gap_ms * NS_PER_MS) {
        c->fault_active |= EC_FAULT_TICK_GAP;
    }
    c->last_tick_wall = woke;
}

static uint64_t forced_mask(const ec_core *c)
{
    if (c->core_fault || proof_pending(c)) { /* the core cannot trust its clock or its outputs: everything safe */
        return c->n_outputs >= 64 ? ~0ULL : (1ULL << c->n_outputs) - 1;
    }
    uint64_t m = 0;
    for (int i = 0; i < c->n_rules; i++) {
        if (c->rules[i].tripped) {
            m |= c->rules[i].cfg.action;
        }
    }
    return m;
}

static int forcing_rule(const ec_core *c, int o)
{
    for (int i = 0; i < c->n_rules; i++) {
        if (c->rules[i].tripped && (c->rules[i].cfg.action & (1ULL << o))) {
            return i;
        }
    }
    return -1;
}

static int permissive_holds(const ec_core *c, const ec_permissive_cfg *p)
{
    const ec_value *v = &c->channels[p->channel].latest;
    if (v->status & (EC_ST_FAULT | EC_ST_STALE | EC_ST_NODATA | EC_ST_RANGE) || isnan(v->value)) {
        return 0;
    }
    switch (p->cmp) {
    case EC_CMP_LT: return v->value < p->value;
    case EC_CMP_GT: return v->value > p->value;
    case EC_CMP_EQ: return fabs(v->value - p->value) < 1e-9;
    case EC_CMP_IN: return v->value >= p->value && v->value <= p->value2;
    default: return 0;
    }
}

/* index of the first failing permissive of output o, or -1 */
static int failing_permissive(const ec_core *c, int o)
{
    for (int i = 0; i < c->n_perms; i++) {
        if (c->perms[i].output == o && !permissive_holds(c, &c->perms[i])) {
            return i;
        }
    }
    return -1;
}

static void drop_output(out *o)
{
    o->energise = 0;
    o->duty_mode = 0;
    o->duty = 0;
    o->duty_acc = 0;
}

static void gate_outputs(ec_core *c, int64_t now)
{
    uint64_t forced = forced_mask(c);
    for (int i = 0; i < c->n_outputs; i++) {
        out *o = &c->outputs[i];
        if (i == c->cfg.watchdog_output) {
            /* a core fault stops the toggling: the external watchdog relay drops the contactor */
            if (!c->core_fault && !(proof_pending(c) && c->proof_state == PROOF_HOLD)) {
                c->watchdog_level ^= 1;
            }
            o->level = c->watchdog_level;
            continue;
        }
        int is_forced = (forced >> i) & 1;
        if (is_forced) {
            if (o->energise || o->duty_mode) {
                drop_output(o);
                push_event(c, EC_EV_FORCED_SAFE, 0, forcing_rule(c, i), i, -1, 0, 0, 0, 0);
            }
        } else if (o->energise || o->duty_mode) {
            int p = failing_permissive(c, i);
            if (p >= 0) {
                drop_output(o);
                push_event(c, EC_EV_PERMISSIVE_DROP, 0, -1, i, c->perms[p].channel, EC_REFUSE_PERMISSIVE, p,
                           c->channels[c->perms[p].channel].latest.value, c->perms[p].value);
            } else if (o->cfg.max_on_ms > 0 && (double)elapsed(now, o->refreshed) > o->cfg.max_on_ms * NS_PER_MS) {
                drop_output(o);
                push_event(c, EC_EV_KEEPALIVE_DROP, 0, -1, i, -1, 0, 0, (double)elapsed(now, o->refreshed) / NS_PER_MS,
                           o->cfg.max_on_ms);
            }
        }
        o->was_forced = is_forced;
        int on = 0;
        if (o->duty_mode) {
            int64_t cycle = (int64_t)(o->cfg.duty_cycle_ms * NS_PER_MS);
            int64_t in_cycle = elapsed(now, o->cycle_start);
            if (!o->cycle_started || in_cycle >= cycle || in_cycle < 0) {
                o->cycle_started = 1;
                /* burst fire: first-order sigma-delta over whole cycles */
                o->cycle_start = now;
                o->duty_acc += o->duty;
                o->cycle_on = o->duty_acc >= 1.0 - 1e-12;
                if (o->cycle_on) {
                    o->duty_acc -= 1.0;
                }
            }
            on = o->cycle_on;
        } else {
            on = o->energise;
        }
        o->level = on ? !o->cfg.safe_level : o->cfg.safe_level;
    }
}

static void write_outputs(ec_core *c)
{
    for (int d = 0; d < c->n_drivers; d++) {
        uint8_t levels[EC_DRV_MAX_IO];
        uint64_t mask = 0;
        for (int i = 0; i < c->n_outputs; i++) {
            const out *o = &c->outputs[i];
            if (o->cfg.driver == d) {
                levels[o->cfg.line] = (uint8_t)o->level;
                mask |= 1ULL << o->cfg.line;
            }
        }
        if (mask == 0) {
            continue;
        }
        int failed = c->drivers[d].ops->write(&c->drivers[d], levels, mask) != EC_OK;
        if (failed && !c->write_failing[d]) {
            push_event(c, EC_EV_DRIVER_ERROR, 0, -1, -1, -1, 1, 0, d, 0);
        }
        if (failed) { /* an output may still be energised out there: a core fault, not a log line */
            c->fault_active |= EC_FAULT_OUTPUT_WRITE;
        }
        c->write_failing[d] = failed;
    }
}

static void read_inputs(ec_core *c)
{
    for (int d = 0; d < c->n_drivers; d++) {
        ec_driver *drv = &c->drivers[d];
        if (drv->ops->read(drv) != EC_OK) {
            for (uint32_t i = 0; i < drv->n_ai; i++) {
                drv->ai_status[i] |= EC_ST_FAULT;
            }
            for (uint32_t i = 0; i < drv->n_di; i++) {
                drv->di_status[i] |= EC_ST_FAULT;
            }
            if (!c->read_failing[d]) {
                push_event(c, EC_EV_DRIVER_ERROR, 0, -1, -1, -1, 0, 0, d, 0);
            }
            c->read_failing[d] = 1;
        } else {
            c->read_failing[d] = 0;
        }
    }
}

static void push_sample(ec_core *c, int64_t now)
{
    uint64_t head = atomic_load_explicit(&c->s_head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&c->s_tail, memory_order_acquire);
    if (head - tail > c->sample_mask) {
        c->stats.samples_lost++;
        return;
    }
    ec_sample *s = &c->samples[head & c->sample_mask];
    s->tick = c->tick_no;
    s->t_ns = now;
    s->outputs = 0;
    s->tripped = 0;
    for (int i = 0; i < c->n_outputs; i++) {
        s->outputs |= (uint64_t)(c->outputs[i].level & 1) << i;
    }
    for (int i = 0; i < c->n_rules; i++) {
        s->tripped |= (uint64_t)(c->rules[i].tripped & 1) << i;
    }
    for (int i = 0; i < c->n_channels; i++) {
        s->value[i] = c->channels[i].latest.value;
        s->status[i] = (uint8_t)c->channels[i].latest.status;
    }
    atomic_store_explicit(&c->s_head, head + 1, memory_order_release);
}

/* Every timer of the core (debounce, dead-man, keep-alive, staleness) runs on its clock, so
 * the clock itself is checked each tick: going backwards or standing still for
 * EC_CLOCK_STALL_MS of wall time is a core fault (everything safe, the watchdog line stops). */
static void check_clock(ec_core *c, int64_t now)
{
    int64_t wall = ec_monotonic_ns();
    c->fault_active &= ~(uint32_t)EC_FAULT_CLOCK_STOPPED;
    if (c->tick_no == 0 || now > c->last_now) {
        c->last_advance_wall = wall;
        c->fault_active &= ~(uint32_t)EC_FAULT_CLOCK_BACKWARDS; /* advancing again: the cause is gone */
    } else if (now < c->last_now) {
        c->fault_active |= EC_FAULT_CLOCK_BACKWARDS;
    } else if (elapsed(wall, c->last_advance_wall) > (int64_t)EC_CLOCK_STALL_MS * 1000000LL) {
        c->fault_active |= EC_FAULT_CLOCK_STOPPED;
    }
    c->last_now = now;
}

/* the local reset input: a press held EC_RESET_HOLD_MS after a release; a contact stuck
 * closed (or closed at start-up) never resets anything, nor does a chattering one */
static void reset_input(ec_core *c, int64_t now)
{
    const ec_value *rv = &c->channels[c->cfg.reset_channel].latest;
    int pressed = rv->status == EC_ST_OK && rv->value >= 0.5;
    if (!pressed) {
        c->reset_armed = 1;
        c->reset_since = -1;
        return;
    }
    if (c->reset_since < 0) {
        c->reset_since = now;
    }
    if (c->reset_armed && elapsed(now, c->reset_since) >= (int64_t)EC_RESET_HOLD_MS * 1000000LL) {
        c->reset_armed = 0;
        do_reset(c, -1, EC_EVF_LOCAL_INPUT);
    }
}

/* one tick; caller holds the lock */
static void tick(ec_core *c)
{
    read_inputs(c);
    int64_t now = core_now(c);
    check_clock(c, now);
    c->tick_no++;
    for (int i = 0; i < c->n_channels; i++) {
        update_channel(c, &c->channels[i], now);
    }
    evaluate_rules(c, now);
    watchdog_proof_step(c, now);
    uint32_t new_faults = c->fault_active & ~c->core_fault;
    if (new_faults) {
        /* a core fault that starts a cascade is its first-out: a later trip is not flagged too */
        int first = c->core_fault == 0 && c->first_out < 0 && !any_tripped(c);
        c->core_fault |= new_faults;
        push_event(c, EC_EV_CORE_FAULT, first ? EC_EVF_FIRST_OUT : 0, -1, -1, -1, (int)new_faults, 0, 0, 0);
    }
    if (c->cfg.reset_channel >= 0 && c->cfg.reset_channel < c->n_channels) {
        reset_input(c, now);
    }
    gate_outputs(c, now);
    c->fault_active &= ~(uint32_t)EC_FAULT_OUTPUT_WRITE;
    write_outputs(c);
    latch_sync(c);
    push_sample(c, now);
    c->stats.ticks++;
}

static void safe_all_outputs(ec_core *c)
{
    for (int i = 0; i < c->n_outputs; i++) {
        drop_output(&c->outputs[i]);
        c->outputs[i].level = c->outputs[i].cfg.safe_level;
    }
    write_outputs(c);
}

static void *sampler_main(void *arg)
{
    ec_core *c = arg;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    int64_t next_ns = (int64_t)next.tv_sec * 1000000000LL + next.tv_nsec;
    while (atomic_load_explicit(&c->running, memory_order_acquire)) {
        next_ns += c->period_ns;
        next.tv_sec = next_ns / 1000000000LL;
        next.tv_nsec = next_ns % 1000000000LL;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
        }
        int64_t woke = ec_monotonic_ns();
        int64_t late = woke - next_ns;
        pthread_mutex_lock(&c->lock);
        int64_t bucket = late < 0 ? 0 : late / EC_JITTER_BUCKET_NS;
        if (bucket >= EC_JITTER_BUCKETS) {
            bucket = EC_JITTER_BUCKETS - 1;
        }
        c->stats.jitter_hist[bucket]++;
        if (late > c->stats.jitter_max_ns) {
            c->stats.jitter_max_ns = late;
        }
        check_tick_gap(c, woke);
        tick(c);
        int64_t done = ec_monotonic_ns();
        if (done - woke > c->stats.exec_max_ns) {
            c->stats.exec_max_ns = done - woke;
        }
        if (done - next_ns >= c->period_ns) {
            /* missed deadlines: count them and re-anchor rather than burst to catch up */
            int64_t missed = (done - next_ns) / c->period_ns;
            c->stats.overruns += (uint64_t)missed;
            next_ns += missed * c->period_ns;
            push_event(c, EC_EV_OVERRUN, 0, -1, -1, -1, 0, 0, (double)missed, 0);
        }
        pthread_mutex_unlock(&c->lock);
    }
    return NULL;
}

int ec_core_start(ec_core *c, char *err, size_t errlen)
{
    if (c == NULL) {
        ec_set_err(err, errlen, "core is NULL");
        return EC_EINVAL;
    }
    if (c->started) {
        ec_set_err(err, errlen, "core already started");
        return EC_ESTATE;
    }
    if (c->cfg.reset_channel >= c->n_channels ||
        (c->cfg.reset_channel >= 0 && c->channels[c->cfg.reset_channel].cfg.kind != EC_CH_DIGITAL)) {
        ec_set_err(err, errlen, "reset_channel %d is not a declared digital channel", c->cfg.reset_channel);
        return EC_EINVAL;
    }
    if (c->cfg.watchdog_output >= c->n_outputs) {
        ec_set_err(err, errlen, "watchdog_output %d is not a declared output", c->cfg.watchdog_output);
        return EC_EINVAL;
    }
    if (c->cfg.watchdog_feedback >= c->n_channels ||
        (c->cfg.watchdog_feedback >= 0 && c->channels[c->cfg.watchdog_feedback].cfg.kind != EC_CH_DIGITAL)) {
        ec_set_err(err, errlen, "watchdog_feedback %d is not a declared digital channel", c->cfg.watchdog_feedback);
        return EC_EINVAL;
    }
    if (c->cfg.watchdog_output >= 0) {
        for (int i = 0; i < c->n_rules; i++) {
            if (c->rules[i].cfg.action & (1ULL << c->cfg.watchdog_output)) {
                ec_set_err(err, errlen, "rule '%s' acts on the watchdog line", c->rules[i].cfg.name);
                return EC_EINVAL;
            }
        }
    }
    if (c->stopped) {
        ec_set_err(err, errlen, "core was stopped: a stopped core is not started again (make a new one)");
        return EC_ESTATE;
    }
    pthread_mutex_lock(&c->lock);
    c->start_t = core_now(c);
    c->heartbeat_t = c->start_t;
    c->proof_wall = 1;
    safe_all_outputs(c);
    pthread_mutex_unlock(&c->lock);

    c->stats.mlock = EC_MLOCK_NONE;
    if (c->cfg.lock_memory && mlockall(MCL_CURRENT | MCL_FUTURE) == 0) {
        c->stats.mlock = EC_MLOCK_OK;
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    c->stats.sched = EC_SCHED_OTHER;
    atomic_store(&c->running, 1);
    int rc = -1;
    if (c->cfg.rt_priority > 0) {
        struct sched_param sp = {.sched_priority = c->cfg.rt_priority};
        pthread_attr_setinheritsched(&attr, PTHREAD_EXPLICIT_SCHED);
        pthread_attr_setschedpolicy(&attr, SCHED_FIFO);
        pthread_attr_setschedparam(&attr, &sp);
        rc = pthread_create(&c->thread, &attr, sampler_main, c);
        if (rc == 0) {
            c->stats.sched = EC_SCHED_FIFO;
        }
    }
    if (rc != 0) { /* not permitted (no CAP_SYS_NICE / rtprio limit): run with the normal scheduler */
        pthread_attr_destroy(&attr);
        pthread_attr_init(&attr);
        rc = pthread_create(&c->thread, &attr, sampler_main, c);
    }
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        atomic_store(&c->running, 0);
        ec_set_err(err, errlen, "cannot start the sampler thread: %s", strerror(rc));
        return EC_EIO;
    }
    pthread_mutex_lock(&c->lock);
    c->started = 1;
    c->scan_thread = pthread_self();
    c->scan_tid = thread_id();
    c->has_scan_thread = 1;
    push_event(c, EC_EV_STARTED, 0, -1, -1, -1, 0, 0, 0, 0);
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

int ec_core_stop(ec_core *c)
{
    if (c == NULL) {
        return EC_EINVAL;
    }
    if (!c->started) {
        /* never started: possibly stepped by run_ticks, which may have energised outputs. Stopping
         * it is as terminal as stopping a sampler: every output safe, no more ticks. */
        pthread_mutex_lock(&c->lock);
        if (!c->stopped) {
            c->stopped = 1;
            safe_all_outputs(c);
            push_event(c, EC_EV_STOPPED, 0, -1, -1, -1, 0, 0, 0, 0);
        }
        pthread_mutex_unlock(&c->lock);
        return EC_OK;
    }
    atomic_store(&c->running, 0);
    pthread_join(c->thread, NULL);
    pthread_mutex_lock(&c->lock);
    c->started = 0;
    c->stopped = 1; /* terminal: no inline ticks, no energising requests, no restart */
    safe_all_outputs(c); /* the controller is leaving: nothing stays energised */
    push_event(c, EC_EV_STOPPED, 0, -1, -1, -1, 0, 0, 0, 0);
    pthread_mutex_unlock(&c->lock);
    /* mlockall is process-wide and other cores may rely on it: the lock stays until exit */
    return EC_OK;
}

int ec_core_run_ticks(ec_core *c, int32_t n)
{
    if (c == NULL || n < 0) {
        return EC_EINVAL;
    }
    if (c->started || c->stopped) {
        return EC_ESTATE;
    }
    pthread_mutex_lock(&c->lock);
    if (!c->has_scan_thread) {
        c->scan_thread = pthread_self();
        c->scan_tid = thread_id();
        c->has_scan_thread = 1;
    }
    if (c->stats.ticks == 0 && c->start_t == 0) {
        c->start_t = core_now(c);
        c->heartbeat_t = c->start_t;
    }
    for (int32_t i = 0; i < n; i++) {
        tick(c);
    }
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

/* ---------- runtime API ---------- */

int ec_core_heartbeat(ec_core *c)
{
    if (c == NULL) {
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    if (c->has_scan_thread && (!pthread_equal(pthread_self(), c->scan_thread) || thread_id() != c->scan_tid)) {
        /* a helper thread that outlives a stuck scan must not keep the dead-man fed */
        pthread_mutex_unlock(&c->lock);
        return EC_ESTATE;
    }
    c->heartbeat_t = core_now(c);
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

static const char *fault_text(uint32_t bits)
{
    if (bits & EC_FAULT_OUTPUT_WRITE) {
        return "an output write failed";
    }
    if (bits & EC_FAULT_CLOCK_BACKWARDS) {
        return "the core clock went backwards";
    }
    if (bits & EC_FAULT_CLOCK_STOPPED) {
        return "the core clock stopped";
    }
    if (bits & EC_FAULT_WATCHDOG_PROOF) {
        return "the watchdog relay failed its proof test (its feedback did not follow the line)";
    }
    if (bits & EC_FAULT_TICK_GAP) {
        return "the sampler missed its ticks for longer than max_tick_gap_ms";
    }
    return "core fault";
}

static int gate_request(ec_core *c, int o, char *err, size_t errlen)
{
    if (c->stopped) {
        ec_set_err(err, errlen, "'%s' refused: the core is stopped", c->outputs[o].cfg.name);
        return EC_ESTATE;
    }
    if (proof_pending(c) && !c->core_fault) {
        push_event(c, EC_EV_REFUSED, 0, -1, o, c->cfg.watchdog_feedback, EC_REFUSE_FORCED, -1, 0, 0);
        ec_set_err(err, errlen, "'%s' refused: watchdog proof test running (the relay's feedback '%s' must "
                   "drop and pick up again first)", c->outputs[o].cfg.name,
                   c->channels[c->cfg.watchdog_feedback].cfg.name);
        return EC_EREFUSED;
    }
    if (c->core_fault) {
        push_event(c, EC_EV_REFUSED, EC_EVF_CORE_FAULT, -1, o, -1, EC_REFUSE_FORCED, -1, 0, 0);
        ec_set_err(err, errlen, "'%s' is held safe by a core fault: %s (reset needed)", c->outputs[o].cfg.name,
                   fault_text(c->core_fault));
        return EC_EREFUSED;
    }
    int r = forcing_rule(c, o);
    if (r >= 0) {
        push_event(c, EC_EV_REFUSED, 0, r, o, c->rules[r].cfg.channel, EC_REFUSE_FORCED, -1, c->rules[r].value,
                   c->rules[r].threshold);
        ec_set_err(err, errlen, "'%s' is held safe by interlock '%s'%s", c->outputs[o].cfg.name,
                   c->rules[r].cfg.name, c->rules[r].cfg.latch ? " (latched: reset needed)" : "");
        return EC_EREFUSED;
    }
    int p = failing_permissive(c, o);
    if (p >= 0) {
        const ec_permissive_cfg *pc = &c->perms[p];
        const chan *ch = &c->channels[pc->channel];
        static const char *ops[] = {"<", ">", "==", "in"};
        push_event(c, EC_EV_REFUSED, 0, -1, o, pc->channel, EC_REFUSE_PERMISSIVE, p, ch->latest.value, pc->value);
        if (pc->cmp == EC_CMP_IN) {
            ec_set_err(err, errlen, "'%s' refused: permissive %s in [%g, %g] does not hold (%s = %g, status %u)",
                       c->outputs[o].cfg.name, ch->cfg.name, pc->value, pc->value2, ch->cfg.name, ch->latest.value,
                       ch->latest.status);
        } else {
            ec_set_err(err, errlen, "'%s' refused: permissive %s %s %g does not hold (%s = %g, status %u)",
                       c->outputs[o].cfg.name, ch->cfg.name, ops[pc->cmp], pc->value, ch->cfg.name,
                       ch->latest.value, ch->latest.status);
        }
        return EC_EREFUSED;
    }
    return EC_OK;
}

static int check_output_arg(ec_core *c, int32_t o, char *err, size_t errlen)
{
    if (c == NULL) {
        ec_set_err(err, errlen, "core is NULL");
        return EC_EINVAL;
    }
    if (o < 0 || o >= c->n_outputs) {
        ec_set_err(err, errlen, "output %d not declared", o);
        return EC_ENOTFOUND;
    }
    if (o == c->cfg.watchdog_output) {
        ec_set_err(err, errlen, "'%s' is the watchdog line: the sampler drives it", c->outputs[o].cfg.name);
        return EC_EINVAL;
    }
    return EC_OK;
}

int ec_core_request_output(ec_core *c, int32_t o, int32_t level, char *err, size_t errlen)
{
    int rc = check_output_arg(c, o, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (level != 0 && level != 1) {
        ec_set_err(err, errlen, "level %d must be 0 or 1", level);
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    out *op = &c->outputs[o];
    if (level == op->cfg.safe_level) {
        drop_output(op);
    } else {
        rc = gate_request(c, o, err, errlen);
        if (rc == EC_OK) {
            op->duty_mode = 0;
            op->energise = 1;
            op->refreshed = core_now(c);
        } else {
            drop_output(op);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_core_set_duty(ec_core *c, int32_t o, double duty, char *err, size_t errlen)
{
    int rc = check_output_arg(c, o, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    if (!(duty >= 0.0 && duty <= 1.0)) {
        ec_set_err(err, errlen, "duty %g must be within 0 .. 1", duty);
        return EC_ERANGE;
    }
    pthread_mutex_lock(&c->lock);
    out *op = &c->outputs[o];
    if (duty == 0.0) {
        drop_output(op);
    } else {
        rc = gate_request(c, o, err, errlen);
        if (rc == EC_OK) {
            if (!op->duty_mode) {
                op->duty_acc = 0;
                op->cycle_started = 0;
            }
            op->energise = 0;
            op->duty_mode = 1;
            op->duty = duty;
            op->refreshed = core_now(c);
        } else {
            drop_output(op);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_core_inject(ec_core *c, int32_t channel, double value, uint32_t status, int64_t t_ns, char *err,
                   size_t errlen)
{
    if (c == NULL || channel < 0 || channel >= c->n_channels) {
        ec_set_err(err, errlen, "channel %d not declared", channel);
        return EC_ENOTFOUND;
    }
    if (c->channels[channel].cfg.kind != EC_CH_INJECTED) {
        ec_set_err(err, errlen, "channel '%s' is not an injected channel", c->channels[channel].cfg.name);
        return EC_EINVAL;
    }
    if ((status & ~(uint32_t)(EC_ST_FAULT | EC_ST_RANGE)) != 0) {
        ec_set_err(err, errlen, "status %#x: only FAULT and RANGE may be injected", status);
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    chan *ch = &c->channels[channel];
    int64_t now = core_now(c);
    if (t_ns == EC_INJECT_NOW) { /* read the clock under the same lock: concurrent feeders stay in order */
        t_ns = now;
    }
    int64_t ahead = elapsed(t_ns, now);
    int rc = EC_OK;
    if (ahead > (int64_t)EC_INJECT_FUTURE_MS * 1000000LL) {
        /* a timestamp from the future would keep the channel fresh forever: refuse it */
        ec_set_err(err, errlen, "'%s': timestamp %.3f s ahead of the core clock (another clock?)", ch->cfg.name,
                   (double)ahead / 1e9);
        rc = EC_ERANGE;
    } else if (ch->inj_has && (ahead > 0 ? now : t_ns) < ch->inj_t) {
        ec_set_err(err, errlen, "'%s': timestamp older than the last value (out of order)", ch->cfg.name);
        rc = EC_ERANGE;
    } else {
        /* a stamp ahead of the core clock (inside the tolerance) is stored as now: it may neither
         * block later honest readings as "out of order" nor keep the channel fresh past max_age_ms */
        ch->inj_value = value;
        ch->inj_status = isfinite(value) ? status : (status | EC_ST_FAULT);
        ch->inj_t = ahead > 0 ? now : t_ns;
        ch->inj_has = 1;
        ch->inj_seq++;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* the argument checks of a reset request, shared by the local and the remote reset */
static int reset_args(const ec_core *c, int32_t r, char *err, size_t errlen)
{
    if (c == NULL) {
        ec_set_err(err, errlen, "core is NULL");
        return EC_EINVAL;
    }
    if (r < -1 || r >= c->n_rules) {
        ec_set_err(err, errlen, "rule %d not declared", r);
        return EC_ENOTFOUND;
    }
    return EC_OK;
}

/* the tripped rule (r, or any when r < 0) that keeps a reset from clearing, -1 if none: the first
 * one, or with prefer_local_only the one a remote reset may never clear (so that is what it names) */
static int held_rule(const ec_core *c, int32_t r, int prefer_local_only)
{
    int held = -1;
    for (int i = 0; i < c->n_rules; i++) {
        if (c->rules[i].tripped && (r < 0 || i == r) &&
            (held < 0 || (prefer_local_only && c->rules[i].cfg.local_reset_only))) {
            held = i;
        }
    }
    return held;
}

/* why rule `held` refused the reset: no verdict on fresh data yet, or its condition still holds */
static void explain_held(const ec_core *c, int held, char *err, size_t errlen)
{
    const rule *ru = &c->rules[held];
    if (!ru->evaluated) {
        ec_set_err(err, errlen, "reset refused: '%s' not yet evaluated on fresh data (restored or waiting "
                   "for its first value)", ru->cfg.name);
    } else {
        ec_set_err(err, errlen, "reset refused: '%s' still holds (value %g, threshold %g)", ru->cfg.name,
                   ru->value, ru->threshold);
    }
}

int ec_core_reset(ec_core *c, int32_t r, char *err, size_t errlen)
{
    int rc = reset_args(c, r, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    pthread_mutex_lock(&c->lock);
    if (c->stopped) {
        pthread_mutex_unlock(&c->lock);
        ec_set_err(err, errlen, "reset refused: the core is stopped (its conditions are not evaluated)");
        return EC_ESTATE;
    }
    rc = do_reset(c, r, 0);
    if (rc == EC_ECONDITION) {
        ec_set_err(err, errlen, "reset refused: %s", fault_text(c->core_fault));
        int held = held_rule(c, r, 0);
        if (held >= 0) {
            explain_held(c, held, err, errlen);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_core_reset_remote(ec_core *c, int32_t r, char *err, size_t errlen)
{
    int rc = reset_args(c, r, err, errlen);
    if (rc != EC_OK) {
        return rc;
    }
    pthread_mutex_lock(&c->lock);
    if (c->stopped) {
        ec_set_err(err, errlen, "reset refused: the core is stopped (its conditions are not evaluated)");
        rc = EC_ESTATE;
    } else if (!c->cfg.allow_remote_reset) {
        push_event(c, EC_EV_RESET_REFUSED, EC_EVF_REMOTE, r, -1, -1, 0, 0, 0, 0);
        ec_set_err(err, errlen, "remote reset refused: this station does not allow it (allow_remote_reset = 0)");
        rc = EC_EREFUSED;
    } else if (c->core_fault) {
        push_event(c, EC_EV_RESET_REFUSED, EC_EVF_REMOTE | EC_EVF_CORE_FAULT, -1, -1, -1, (int)c->core_fault, 0, 0, 0);
        ec_set_err(err, errlen, "remote reset refused: %s (a core fault needs a local reset)", fault_text(c->core_fault));
        rc = EC_EREFUSED;
    } else {
        rc = do_reset(c, r, EC_EVF_REMOTE);
        int held = rc != EC_OK ? held_rule(c, r, 1) : -1;
        if (held >= 0 && c->rules[held].cfg.local_reset_only) {
            ec_set_err(err, errlen, "remote reset refused: '%s' may only be reset locally (at the station)",
                       c->rules[held].cfg.name);
            rc = EC_EREFUSED;
        } else if (held >= 0) {
            explain_held(c, held, err, errlen);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* caller holds the lock */
static void output_bits(const ec_core *c, uint64_t *levels, uint64_t *requested)
{
    uint64_t lv = 0, rq = 0;
    for (int i = 0; i < c->n_outputs; i++) {
        lv |= (uint64_t)(c->outputs[i].level & 1) << i;
        rq |= (uint64_t)((c->outputs[i].energise || c->outputs[i].duty_mode) ? 1 : 0) << i;
    }
    *levels = lv;
    *requested = rq;
}

/* caller holds the lock */
static void rule_bits(const ec_core *c, uint64_t *tripped, uint64_t *resettable)
{
    uint64_t t = 0, l = 0;
    for (int i = 0; i < c->n_rules; i++) {
        if (c->rules[i].tripped) {
            t |= 1ULL << i;
            if (c->rules[i].cfg.latch && !c->rules[i].cond && c->rules[i].evaluated) {
                l |= 1ULL << i; /* latched and resettable: evaluated on fresh data and clear */
            }
        }
    }
    *tripped = t;
    *resettable = l;
}

int ec_core_latest(ec_core *c, ec_value *out_v, int32_t n)
{
    if (c == NULL || out_v == NULL || n < 0) {
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    int k = n < c->n_channels ? n : c->n_channels;
    for (int i = 0; i < k; i++) {
        out_v[i] = c->channels[i].latest;
    }
    pthread_mutex_unlock(&c->lock);
    return k;
}

int ec_core_outputs(ec_core *c, uint64_t *levels, uint64_t *requested, uint64_t *forced)
{
    if (c == NULL) {
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    uint64_t lv, rq;
    output_bits(c, &lv, &rq);
    if (levels) {
        *levels = lv;
    }
    if (requested) {
        *requested = rq;
    }
    if (forced) {
        *forced = forced_mask(c);
    }
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

/* Tightening is all Python may do to a rule: a stricter threshold for a while (an agreement band at a
 * settled soak), never a looser one, and no loosening back while the rule is tripped (a trip taken at
 * the tight band must be reset at it, not wished away by restoring the wide band first). */
int ec_core_tighten_rule(ec_core *c, int32_t r, double threshold, char *err, size_t errlen)
{
    if (c == NULL) {
        ec_set_err(err, errlen, "core is NULL");
        return EC_EINVAL;
    }
    if (r < 0 || r >= c->n_rules) {
        ec_set_err(err, errlen, "rule %d not declared", r);
        return EC_ENOTFOUND;
    }
    /* the configuration is fixed once a rule is added: reading it needs no lock */
    const ec_rule_cfg *cfg = &c->rules[r].cfg;
    if (cfg->kind != EC_RULE_HIGH && cfg->kind != EC_RULE_LOW && cfg->kind != EC_RULE_AGREE) {
        ec_set_err(err, errlen, "rule '%s': only high, low and agree rules take a tighter threshold", cfg->name);
        return EC_EINVAL;
    }
    if (!isfinite(threshold)) {
        ec_set_err(err, errlen, "rule '%s': threshold %g is not a finite number", cfg->name, threshold);
        return EC_EINVAL;
    }
    int looser = cfg->kind == EC_RULE_LOW ? threshold < cfg->threshold : threshold > cfg->threshold;
    if (looser) {
        ec_set_err(err, errlen, "rule '%s': %g is looser than its configured threshold %g (only as strict or "
                   "stricter is accepted)", cfg->name, threshold, cfg->threshold);
        return EC_ERANGE;
    }
    if (cfg->kind == EC_RULE_AGREE && !(threshold > cfg->hysteresis)) {
        ec_set_err(err, errlen, "rule '%s': band %g is not above the hysteresis %g (it could never clear)",
                   cfg->name, threshold, cfg->hysteresis);
        return EC_ERANGE;
    }
    if (cfg->kind != EC_RULE_AGREE) {
        const ec_channel_cfg *ch = &c->channels[cfg->channel].cfg;
        if (threshold < ch->range_lo || threshold > ch->range_hi) {
            ec_set_err(err, errlen, "rule '%s': threshold %g outside the channel's range %g .. %g", cfg->name,
                       threshold, ch->range_lo, ch->range_hi);
            return EC_ERANGE;
        }
    }
    pthread_mutex_lock(&c->lock);
    rule *ru = &c->rules[r];
    int loosens = cfg->kind == EC_RULE_LOW ? threshold < ru->threshold : threshold > ru->threshold;
    if (loosens && ru->tripped) {
        double now_thr = ru->threshold;
        pthread_mutex_unlock(&c->lock);
        ec_set_err(err, errlen, "rule '%s' is tripped at threshold %g: it keeps it until reset", cfg->name,
                   now_thr);
        return EC_ESTATE;
    }
    ru->threshold = threshold;
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

int ec_core_rule_threshold(ec_core *c, int32_t r, double *effective)
{
    if (c == NULL || effective == NULL) {
        return EC_EINVAL;
    }
    if (r < 0 || r >= c->n_rules) {
        return EC_ENOTFOUND;
    }
    pthread_mutex_lock(&c->lock);
    *effective = c->rules[r].threshold;
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

int ec_core_rules(ec_core *c, uint64_t *tripped, uint64_t *latched, int32_t *first_out)
{
    if (c == NULL) {
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    uint64_t t, l;
    rule_bits(c, &t, &l);
    if (tripped) {
        *tripped = t;
    }
    if (latched) {
        *latched = l;
    }
    if (first_out) {
        *first_out = c->first_out;
    }
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

/* One lock, one tick: the sampler's tick holds this lock throughout, so nothing here is torn. */
int ec_core_snapshot(ec_core *c, ec_snapshot *out)
{
    if (c == NULL || out == NULL) {
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    out->tick = c->tick_no;
    out->now_ns = core_now(c);
    out->n_channels = c->n_channels;
    out->n_outputs = c->n_outputs;
    out->n_rules = c->n_rules;
    out->first_out = c->first_out;
    for (int i = 0; i < c->n_channels; i++) {
        out->value[i] = c->channels[i].latest.value;
        out->status[i] = c->channels[i].latest.status;
        out->t_ns[i] = c->channels[i].latest.t_ns;
    }
    output_bits(c, &out->levels, &out->requested);
    out->forced = forced_mask(c);
    rule_bits(c, &out->tripped, &out->resettable);
    for (int i = 0; i < c->n_rules; i++) {
        out->threshold[i] = c->rules[i].threshold;
    }
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}

int64_t ec_core_now_ns(ec_core *c)
{
    if (c == NULL) {
        return 0;
    }
    return core_now(c);
}

int ec_core_drain_samples(ec_core *c, ec_sample *out_s, int32_t max)
{
    if (c == NULL || out_s == NULL || max < 0) {
        return EC_EINVAL;
    }
    uint64_t tail = atomic_load_explicit(&c->s_tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&c->s_head, memory_order_acquire);
    int n = 0;
    while (tail != head && n < max) {
        out_s[n++] = c->samples[tail & c->sample_mask];
        tail++;
    }
    atomic_store_explicit(&c->s_tail, tail, memory_order_release);
    return n;
}

int ec_core_drain_events(ec_core *c, ec_event *out_e, int32_t max)
{
    if (c == NULL || out_e == NULL || max < 0) {
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    int n = 0;
    while (c->e_tail != c->e_head && n < max) {
        out_e[n++] = c->events[c->e_tail & c->event_mask];
        c->e_tail++;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

int ec_core_stats(ec_core *c, ec_stats *out_st)
{
    if (c == NULL || out_st == NULL) {
        return EC_EINVAL;
    }
    pthread_mutex_lock(&c->lock);
    *out_st = c->stats;
    out_st->running = c->started;
    out_st->core_fault = c->core_fault;
    out_st->proof_pending = proof_pending(c) && !(c->core_fault & EC_FAULT_WATCHDOG_PROOF);
    out_st->n_channels = c->n_channels;
    out_st->n_outputs = c->n_outputs;
    out_st->n_rules = c->n_rules;
    pthread_mutex_unlock(&c->lock);
    return EC_OK;
}
