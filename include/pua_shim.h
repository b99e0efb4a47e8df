/* pua-rs C shim: what Kamailio offers only as macros or static inlines,
 * compiled by build.rs with the core's own -D set (DBG_SR_MEMORY, ...).
 * Declared for Rust in src/kam/shim.rs. Our own code, not Kamailio's. */
#ifndef PUA_RS_SHIM_H
#define PUA_RS_SHIM_H
#include <stddef.h>

struct tm_binds;

void *pua_shim_shm_malloc(size_t size);
void pua_shim_shm_free(void *p);
void *pua_shim_pkg_malloc(size_t size);
void pua_shim_pkg_free(void *p);
/* Would a line at this level be logged for module "pua"? */
int pua_shim_log_enabled(int level);
/* LM_* with our own location prefix; msg is printed with "%s". */
void pua_shim_log(int level, const char *prefix, const char *msg);
/* tm_load.h's static inline load_tm_api(). */
int pua_shim_load_tm(struct tm_binds *tmb);
struct sip_msg;
struct hdr_field;
/* parse_headers(msg, HDR_EOH_F, 0): every header of a reply. */
int pua_shim_parse_all_headers(struct sip_msg *msg);
/* parse_expires() on a header, so consumers can read hdr->parsed. */
int pua_shim_parse_expires(struct hdr_field *hdr);
/* Shared-memory usage of the whole server (core.shmmem's real_used). */
unsigned long pua_shim_shm_real_used(void);
#endif
