/* core.c - STUB while the sampler is written. */
#include "edge_core.h"
void ec_core_cfg_default(ec_core_cfg *cfg) { }
int ec_core_new(const ec_core_cfg *cfg, ec_core **out, char *err, size_t errlen) { return -3; }
void ec_core_free(ec_core *core) { }
int ec_core_add_driver(ec_core *core, const char *driver, const char *params, char *err, size_t errlen) { return -3; }
int ec_core_add_channel(ec_core *core, const ec_channel_cfg *cfg, char *err, size_t errlen) { return -3; }
int ec_core_add_output(ec_core *core, const ec_output_cfg *cfg, char *err, size_t errlen) { return -3; }
int ec_core_add_rule(ec_core *core, const ec_rule_cfg *cfg, char *err, size_t errlen) { return -3; }
int ec_core_add_permissive(ec_core *core, const ec_permissive_cfg *cfg, char *err, size_t errlen) { return -3; }
int ec_core_start(ec_core *core, char *err, size_t errlen) { return -3; }
int ec_core_stop(ec_core *core) { return -3; }
int ec_core_heartbeat(ec_core *core) { return -3; }
int ec_core_request_output(ec_core *core, int32_t output, int32_t level, char *err, size_t errlen) { return -3; }
int ec_core_set_duty(ec_core *core, int32_t output, double duty, char *err, size_t errlen) { return -3; }
int ec_core_inject(ec_core *core, int32_t channel, double value, uint32_t status, int64_t t_ns) { return -3; }
int ec_core_reset(ec_core *core, int32_t rule, char *err, size_t errlen) { return -3; }
int ec_core_latest(ec_core *core, ec_value *out, int32_t n) { return -3; }
int ec_core_outputs(ec_core *core, uint64_t *levels, uint64_t *requested, uint64_t *forced) { return -3; }
int ec_core_rules(ec_core *core, uint64_t *tripped, uint64_t *latched, int32_t *first_out) { return -3; }
int64_t ec_core_now_ns(ec_core *core) { return -3; }
int ec_core_drain_samples(ec_core *core, ec_sample *out, int32_t max) { return -3; }
int ec_core_drain_events(ec_core *core, ec_event *out, int32_t max) { return -3; }
int ec_core_stats(ec_core *core, ec_stats *out) { return -3; }
int ec_core_run_ticks(ec_core *core, int32_t n) { return -3; }
int ec_sim_create(const char *path, char *err, size_t errlen) { return -3; }
void ec_channel_cfg_default(ec_channel_cfg *cfg) { }
void ec_output_cfg_default(ec_output_cfg *cfg) { }
void ec_rule_cfg_default(ec_rule_cfg *cfg) { }
