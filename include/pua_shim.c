/* pua-rs C shim; see pua_shim.h. Compiled with the Debian core's -D set. */
#include "core/mem/shm.h"
#include "core/mem/pkg.h"
#include "core/dprint.h"
#include "core/parser/msg_parser.h"
#include "core/parser/parse_expires.h"
#include "core/parser/parse_to.h"
#include "core/parser/parse_from.h"
#include "core/parser/parse_cseq.h"
#include "core/parser/parse_rr.h"
#include "core/parser/contact/parse_contact.h"
#include "core/ut.h"
#include "modules/tm/tm_load.h"
#include "modules/tm/dlg.h"
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

int pua_shim_reply_dialog(struct sip_msg *msg, struct pua_reply_dlg *out)
{
	memset(out, 0, sizeof(*out));
	if (parse_headers(msg, HDR_EOH_F, 0) < 0)
		return -1;
	if (msg->to && parse_to_header(msg) == 0 && get_to(msg))
		out->to_tag = get_to(msg)->tag_value;
	if (msg->contact && parse_contact(msg->contact) == 0 && msg->contact->parsed
			&& ((contact_body_t *)msg->contact->parsed)->contacts)
		out->contact = ((contact_body_t *)msg->contact->parsed)->contacts->uri;
	if (msg->record_route
			&& print_rr_body(msg->record_route, &out->record_route, 1, 0) != 0) {
		out->record_route.s = NULL;
		out->record_route.len = 0;
	}
	if (msg->cseq && msg->cseq->parsed
			&& str2int(&get_cseq(msg)->number, &out->cseq) == 0)
		out->has_cseq = 1;
	return 0;
}

int pua_shim_request_dialog(struct sip_msg *msg, struct pua_request_dlg *out)
{
	memset(out, 0, sizeof(*out));
	if (parse_headers(msg, HDR_EOH_F, 0) < 0)
		return -1;
	if (msg->callid)
		out->call_id = msg->callid->body;
	if (msg->from && parse_from_header(msg) == 0 && get_from(msg)) {
		out->from_tag = get_from(msg)->tag_value;
		out->from_uri = get_from(msg)->uri;
	}
	if (msg->to && parse_to_header(msg) == 0 && get_to(msg)) {
		out->to_tag = get_to(msg)->tag_value;
		out->to_uri = get_to(msg)->uri;
	}
	/* The raw header body: the URI is taken out in Rust, so a garbage
	 * Contact does not make the core's parser log errors. */
	if (msg->contact)
		out->contact = msg->contact->body;
	return 0;
}

int pua_shim_send_on_dialog(struct tm_binds *tmb, str *method, str *headers,
		str *body, str *call_id, str *loc_tag, str *rem_tag, unsigned int cseq,
		str *loc_uri, str *rem_uri, str *rem_target, str *dst_uri,
		str *route_set, void *cb, void *cbp)
{
	dlg_t dlg;
	uac_req_t uac_r;
	int ret;

	memset(&dlg, 0, sizeof(dlg));
	dlg.id.call_id = *call_id;
	dlg.id.loc_tag = *loc_tag;
	if (rem_tag && rem_tag->len > 0)
		dlg.id.rem_tag = *rem_tag;
	dlg.loc_seq.value = cseq;
	dlg.loc_seq.is_set = 1;
	dlg.loc_uri = *loc_uri;
	dlg.rem_uri = *rem_uri;
	dlg.rem_target = *rem_target;
	if (dst_uri && dst_uri->len > 0)
		dlg.dst_uri = *dst_uri;
	dlg.state = (rem_tag && rem_tag->len > 0) ? DLG_CONFIRMED : DLG_NEW;
	if (route_set && route_set->s && route_set->len > 0) {
		if (parse_rr_body(route_set->s, route_set->len, &dlg.route_set) < 0) {
			LM_ERR("cannot parse the stored route set\n");
			return -1;
		}
	}
	set_uac_req(&uac_r, method, headers, body, &dlg, TMCB_LOCAL_COMPLETED,
			(transaction_cb *)cb, cbp);
	ret = tmb->t_uac(&uac_r);
	if (dlg.route_set)
		free_rr(&dlg.route_set);
	return ret;
}
