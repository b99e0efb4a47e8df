/* pua-rs C shim; see pua_shim.h. Compiled with the Debian core's -D set. */
#include "core/mem/shm.h"
#include "core/mem/pkg.h"
#include "core/dprint.h"
#include "core/parser/msg_parser.h"
#include "core/parser/parse_expires.h"
#include "modules/tm/tm_load.h"
#include "pua_shim.h"

/* DBG_SR_MEMORY: the allocator keeps the file/function/module pointers of
 * each allocation for its dumps; _SRC_LOC_ etc. are string literals here. */
void *pua_shim_shm_malloc(size_t size) { return shm_malloc(size); }
void pua_shim_shm_free(void *p) { shm_free(p); }
void *pua_shim_pkg_malloc(size_t size) { return pkg_malloc(size); }
void pua_shim_pkg_free(void *p) { pkg_free(p); }

int pua_shim_log_enabled(int level)
{
	return DPRINT_NON_CRIT && get_debug_level(LOG_MNAME, LOG_MNAME_LEN) >= level;
}

void pua_shim_log(int level, const char *prefix, const char *msg)
{
	LOG_FX(DEFAULT_FACILITY, level, NULL, prefix, NULL, "%s\n", msg);
}

int pua_shim_load_tm(struct tm_binds *tmb) { return load_tm_api(tmb); }

unsigned long pua_shim_shm_real_used(void)
{
	struct mem_info mi;
	shm_info(&mi);
	return mi.real_used;
}

int pua_shim_parse_all_headers(struct sip_msg *msg)
{
	return parse_headers(msg, HDR_EOH_F, 0);
}

int pua_shim_parse_expires(struct hdr_field *hdr)
{
	if (hdr == NULL)
		return -1;
	if (hdr->parsed != NULL)
		return 0;
	return parse_expires(hdr);
}
