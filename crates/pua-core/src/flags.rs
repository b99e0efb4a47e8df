//! The flag constants of the 5.6.3 headers (hash.h, pua.h), which are
//! unparenthesised shift macros that bindgen does not carry over.

// Event flags (ua_pres_t.event, publ_info_t.event, subs_info_t.event).
pub const PRESENCE_EVENT: i32 = 1 << 0;
pub const PWINFO_EVENT: i32 = 1 << 1;
pub const BLA_EVENT: i32 = 1 << 2;
pub const MSGSUM_EVENT: i32 = 1 << 3;
pub const CONFERENCE_EVENT: i32 = 1 << 4;
pub const DIALOG_EVENT: i32 = 1 << 5;
pub const REGINFO_EVENT: i32 = 1 << 6;
pub const XCAPDIFF_EVENT: i32 = 1 << 7;

// Source flags (ua_pres_t.flag / source_flag): who asked; callbacks match on them.
pub const UL_PUBLISH: i32 = 1 << 0;
pub const BLA_PUBLISH: i32 = 1 << 1;
pub const BLA_SUBSCRIBE: i32 = 1 << 2;
pub const XMPP_PUBLISH: i32 = 1 << 3;
pub const XMPP_SUBSCRIBE: i32 = 1 << 4;
pub const XMPP_INITIAL_SUBS: i32 = 1 << 5;
pub const RPC_PUBLISH: i32 = 1 << 6;
pub const RPC_ASYN_PUBLISH: i32 = 1 << 7;
pub const RPC_SUBSCRIBE: i32 = 1 << 8;
pub const RLS_SUBSCRIBE: i32 = 1 << 9;
pub const DIALOG_PUBLISH: i32 = 1 << 10;
pub const PURPLE_PUBLISH: i32 = 1 << 11;
pub const REGINFO_PUBLISH: i32 = 1 << 12;
pub const REGINFO_SUBSCRIBE: i32 = 1 << 13;
pub const XCAPDIFF_PUBLISH: i32 = 1 << 14;
pub const XCAPDIFF_SUBSCRIBE: i32 = 1 << 15;
/// Every source flag a callback can register for.
pub const ALL_SOURCE_FLAGS: i32 = (1 << 16) - 1;

// db_flag values.
pub const NO_UPDATEDB_FLAG: i32 = 1 << 0;
pub const UPDATEDB_FLAG: i32 = 1 << 1;
pub const INSERTDB_FLAG: i32 = 1 << 2;
pub const WTHROUGHDB_FLAG: i32 = 1 << 3;

// subs_info_t.flag / publ_info_t.flag.
pub const INSERT_TYPE: i32 = 1 << 1;
pub const UPDATE_TYPE: i32 = 1 << 2;

/// send_publish's return for a new publication without a body.
pub const ERR_PUBLISH_NO_BODY: i32 = -10;

// ua_pres_t.ua_flag: who made a request. Consumer callbacks run only for
// REQ_OTHER (requests a consumer asked for), not for the module's own
// refreshes and retries (REQ_ME).
pub const REQ_OTHER: i32 = 0;
pub const REQ_ME: i32 = 1;
