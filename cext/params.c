/* params.c - "key=value;key=value" parsing for driver parameters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "edge_core.h"

int ec_param_get(const char *params, const char *key, char *out, size_t outlen)
{
    if (params == NULL || key == NULL || out == NULL || outlen == 0) {
        return EC_EINVAL;
    }
    size_t klen = strlen(key);
    const char *p = params;
    while (*p != '\0') {
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            size_t vlen = len - klen - 1;
            if (vlen + 1 > outlen) {
                return EC_EINVAL;
            }
            memcpy(out, p + klen + 1, vlen);
            out[vlen] = '\0';
            return 1;
        }
        if (end == NULL) {
            break;
        }
        p = end + 1;
    }
    return 0;
}

int ec_param_int_list(const char *value, int32_t *out, int max)
{
    if (value == NULL || out == NULL || max <= 0) {
        return EC_EINVAL;
    }
    int n = 0;
    const char *p = value;
    if (*p == '\0') {
        return 0;
    }
    for (;;) {
        char *end = NULL;
        if (*p < '0' || *p > '9') {
            return EC_EINVAL;
        }
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1000000 || n >= max) {
            return EC_EINVAL;
        }
        out[n++] = (int32_t)v;
        if (*end == '\0') {
            return n;
        }
        if (*end != ',') {
            return EC_EINVAL;
        }
        p = end + 1;
    }
}

/* every key=value segment must name a known key, once */
int ec_param_check_keys(const char *params, const char *const *known, char *err, size_t errlen)
{
    int seen[32] = {0}; /* one per known key */
    const char *p = params;
    while (*p != '\0') {
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > 0) {
            const char *eq = memchr(p, '=', len);
            if (eq == NULL) {
                ec_set_err(err, errlen, "parameter '%.*s' has no value (expected key=value)",
                           (int)len, p);
                return EC_EINVAL;
            }
            size_t klen = (size_t)(eq - p);
            int k = 0;
            while (known[k] != NULL && !(strlen(known[k]) == klen && strncmp(known[k], p, klen) == 0)) {
                k++;
            }
            if (known[k] == NULL || k >= 32) {
                char list[256] = "";
                size_t used = 0;
                for (int i = 0; known[i] != NULL && used + strlen(known[i]) + 3 < sizeof list; i++) {
                    used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", known[i]);
                }
                ec_set_err(err, errlen, "unknown parameter '%.*s' (known: %s)", (int)klen, p, list);
                return EC_EINVAL;
            }
            if (seen[k]) {
                ec_set_err(err, errlen, "parameter '%s' given twice", known[k]);
                return EC_EINVAL;
            }
            seen[k] = 1;
        }
        if (end == NULL) {
            break;
        }
        p = end + 1;
    }
    return EC_OK;
}
