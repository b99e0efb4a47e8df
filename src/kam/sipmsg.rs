//! Reading replies: the headers the engines look at, out of a `sip_msg`.

use super::shim;
use pua_core::publish::ReplyInfo;
use pua_core::shm::str_bytes;
use pua_sys::sip_msg;

/// tm's FAKED_REPLY: `(struct sip_msg*)-1`, "no reply" (local timeout).
pub const FAKED_REPLY: *mut sip_msg = usize::MAX as *mut sip_msg;

/// Whether `msg` is a real reply (not null, not FAKED_REPLY).
pub fn is_real(msg: *mut sip_msg) -> bool {
    !msg.is_null() && msg != FAKED_REPLY
}

/// The code and the PUBLISH-relevant headers of a reply. The Expires header
/// is also parsed by Kamailio's parser (so consumers such as pua_rpc can
/// read `reply->expires->parsed`); if that parser refuses it, the value is
/// reported as unusable.
///
/// # Safety
/// `msg` must be a real reply (see [`is_real`]) owned by tm for the call.
pub unsafe fn reply_info(msg: *mut sip_msg, code: i32) -> ReplyInfo {
    let mut info = ReplyInfo {
        code: code.max(0) as u32,
        ..Default::default()
    };
    if shim::pua_shim_parse_all_headers(msg) < 0 {
        pua_core::lm_err!("cannot parse the headers of a {} reply", code);
        info.expires = Some(b"<unparsable message>".to_vec());
        return info;
    }
    let mut h = (*msg).headers;
    while !h.is_null() {
        let name = str_bytes(&(*h).name);
        let body = str_bytes(&(*h).body).to_vec();
        let slot = if name.eq_ignore_ascii_case(b"Expires") {
            Some(&mut info.expires)
        } else if name.eq_ignore_ascii_case(b"SIP-ETag") {
            Some(&mut info.etag)
        } else if name.eq_ignore_ascii_case(b"Min-Expires") {
            Some(&mut info.min_expires)
        } else if name.eq_ignore_ascii_case(b"Retry-After") {
            Some(&mut info.retry_after)
        } else {
            None
        };
        if let Some(slot) = slot {
            if slot.is_none() {
                *slot = Some(body);
            }
        }
        h = (*h).next;
    }
    if info.expires.is_some() && shim::pua_shim_parse_expires((*msg).expires) < 0 {
        info.expires = Some(b"<refused by Kamailio's Expires parser>".to_vec());
    }
    info
}
