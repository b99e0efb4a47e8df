/*
 * nullpua: the benchmark's "pua_usrloc floor" (bench/README.md). A module
 * named "pua" that does the least any pua must do for pua_usrloc: it hands
 * the PUBLISH that pua_usrloc asks for to tm's t_request() with a reply
 * callback, and nothing else (no record table, no body processing, no etag;
 * every PUBLISH goes out as it came, the callback ignores the reply). With
 * it, "config - nullpua floor" is the cost of a pua module itself; the uac
 * floor also keeps pua_usrloc's own work (its libxml2 PIDF, its pkg
 * allocations), which no pua can avoid.
 *
 * Not part of pua.so. bench/run.py compiles it against the Kamailio 5.6.3
 * headers that the build fetches (kamailio-headers/), with the core's -D set.
 */
#include <stdio.h>
#include <string.h>

#include "core/sr_module.h"
#include "core/dprint.h"
#include "modules/tm/tm_load.h"
#include "modules/pua/pua_bind.h"

MODULE_VERSION

static struct tm_binds tmb;
static str outbound_proxy = STR_NULL;
/* Accepted so that the pua configuration loads unchanged; not used. */
static str db_url = STR_NULL;
static int db_mode = 0;

static str method = str_init("PUBLISH");

static void null_cback(struct cell *t, int type, struct tmcb_params *ps)
{
	(void)t;
	(void)type;
	(void)ps;
}

static int null_send_publish(publ_info_t *publ)
{
	char hb[256];
	str hdrs;
	uac_req_t uac_r;
	int expires = publ->expires < 0 ? 3600 : publ->expires;
	int has_body = publ->body != NULL && publ->body->s != NULL;

	hdrs.len = snprintf(hb, sizeof(hb), "Event: presence\r\nExpires: %d\r\n%s",
			expires, has_body ? "Content-Type: application/pidf+xml\r\n" : "");
	if(hdrs.len < 0 || hdrs.len >= (int)sizeof(hb))
		return -1;
	hdrs.s = hb;
	set_uac_req(&uac_r, &method, &hdrs, has_body ? publ->body : NULL, 0,
			TMCB_LOCAL_COMPLETED, null_cback, NULL);
	if(tmb.t_request(&uac_r, publ->pres_uri, publ->pres_uri, publ->pres_uri,
			   outbound_proxy.s ? &outbound_proxy : NULL)
			< 0) {
		LM_ERR("t_request failed\n");
		return -1;
	}
	return 0;
}

static int null_send_subscribe(subs_info_t *subs)
{
	(void)subs;
	return -1;
}

static int null_bind_pua(pua_api_t *api)
{
	if(api == NULL)
		return -1;
	memset(api, 0, sizeof(*api));
	api->send_publish = null_send_publish;
	api->send_subscribe = null_send_subscribe;
	return 0;
}

static int mod_init(void)
{
	if(load_tm_api(&tmb) < 0) {
		LM_ERR("cannot load the tm API\n");
		return -1;
	}
	return 0;
}

static cmd_export_t cmds[] = {
	{"bind_pua", (cmd_function)null_bind_pua, 1, 0, 0, 0},
	{0, 0, 0, 0, 0, 0}
};

static param_export_t params[] = {
	{"outbound_proxy", PARAM_STR, &outbound_proxy},
	{"db_url", PARAM_STR, &db_url},
	{"db_mode", INT_PARAM, &db_mode},
	{0, 0, 0}
};

struct module_exports exports = {
	"pua", DEFAULT_DLFLAGS, cmds, params, 0, 0, 0, mod_init, 0, 0
};
