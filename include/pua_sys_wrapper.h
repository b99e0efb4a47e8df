/* Our own list of the Kamailio 5.6.3 headers that bindgen reads for pua-sys.
 * The headers themselves are fetched at build time (kamailio-headers/fetch.sh)
 * and never committed. Include paths: kamailio-headers/src/src. */
#include <libxml/parser.h>
#include <libxml/tree.h>
#include "core/str.h"
#include "core/sr_module.h"
#include "core/rpc.h"
#include "core/rpc_lookup.h"
#include "core/kemi.h"
#include "core/timer.h"
#include "core/ut.h"
#include "core/parser/msg_parser.h"
#include "core/parser/parse_from.h"
#include "core/parser/contact/parse_contact.h"
#include "lib/srdb1/db.h"
#include "modules/tm/tm_load.h"
#include "modules/rls/list.h"
#include "modules/pua/hash.h"
#include "modules/pua/event_list.h"
#include "modules/pua/send_publish.h"
#include "modules/pua/send_subscribe.h"
#include "modules/pua/pua_callback.h"
#include "modules/pua/pua_bind.h"
#include "modules/pua/pidf.h"
