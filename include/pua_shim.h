/* pua-rs C shim: what Kamailio offers only as macros or static inlines,
 * compiled by build.rs with the core's own -D set (DBG_SR_MEMORY, ...).
 * Declared for Rust in src/kam/shim.rs. Our own code, not Kamailio's. */
#ifndef PUA_RS_SHIM_H
#define PUA_RS_SHIM_H
#include <stddef.h>

struct tm_binds;
#include "core/str.h"

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
/* The dialog fields of a reply to a SUBSCRIBE. Strings point into the
 * message, except record_route (reversed route set, pkg memory: free it
 * with pua_shim_pkg_free). Absent fields have len 0. */
struct pua_reply_dlg {
	str to_tag;
	str contact;
	str record_route;
	unsigned int cseq;
	int has_cseq;
};
int pua_shim_reply_dialog(struct sip_msg *msg, struct pua_reply_dlg *out);

/* The dialog fields of an in-dialog request (a NOTIFY). Strings point into
 * the message; absent fields have len 0; contact is the raw header body. */
struct pua_request_dlg {
	str call_id;
	str from_tag;
	str to_tag;
	str from_uri;
	str to_uri;
	str contact;
};
int pua_shim_request_dialog(struct sip_msg *msg, struct pua_request_dlg *out);

/* Sends `method` on a dialog described by its parts (rem_tag empty: a new
 * dialog), with CSeq `cseq`, through tm's t_uac; the route set is parsed
 * from a Record-Route string. Returns t_uac's result (< 0: not sent). */
int pua_shim_send_on_dialog(struct tm_binds *tmb, str *method, str *headers,
		str *body, str *call_id, str *loc_tag, str *rem_tag, unsigned int cseq,
		str *loc_uri, str *rem_uri, str *rem_target, str *dst_uri,
		str *route_set, void *cb, void *cbp);

/* Shared-memory usage of the whole server (core.shmmem's real_used). */
unsigned long pua_shim_shm_real_used(void);
#endif
