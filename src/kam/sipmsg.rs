//! Reading replies: the headers the engines look at, out of a `sip_msg`.

use super::shim;
use pua_core::publish::ReplyInfo;
use pua_core::shm::str_bytes;
use pua_sys::sip_msg;
use std::borrow::Cow;

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
/// `msg` must be a real reply (see [`is_real`]) owned by tm for the call,
/// and outlive `'a` (the values are borrowed from it).
pub unsafe fn reply_info<'a>(msg: *mut sip_msg, code: i32) -> ReplyInfo<'a> {
    reply_info_for(msg, code, true)
}

/// As [`reply_info`]; with `for_consumers` false (no consumer callback will
/// see the reply) the four headers are read from the message bytes
/// ([`pua_core::publish::scan_reply_headers`]) instead of running
/// Kamailio's parser over every header; a header section that scan does not
/// accept still goes through Kamailio's parser.
///
/// # Safety
/// As [`reply_info`].
pub unsafe fn reply_info_for<'a>(
    msg: *mut sip_msg,
    code: i32,
    for_consumers: bool,
) -> ReplyInfo<'a> {
    if !for_consumers && !(*msg).buf.is_null() {
        let buf = std::slice::from_raw_parts((*msg).buf as *const u8, (*msg).len as usize);
        if let Some(info) = pua_core::publish::scan_reply_headers(code.max(0) as u32, buf) {
            return info;
        }
    }
    let mut info = ReplyInfo {
        code: code.max(0) as u32,
        ..Default::default()
    };
    if shim::pua_shim_parse_all_headers(msg) < 0 {
        pua_core::lm_err!("cannot parse the headers of a {} reply", code);
        info.expires = Some(Cow::Borrowed(b"<unparsable message>"));
        return info;
    }
    let mut h = (*msg).headers;
    while !h.is_null() {
        info.offer(str_bytes(&(*h).name), str_bytes(&(*h).body));
        h = (*h).next;
    }
    if info.expires.is_some() && shim::pua_shim_parse_expires((*msg).expires) < 0 {
        info.expires = Some(Cow::Borrowed(b"<refused by Kamailio's Expires parser>"));
    }
    info
}

/// The dialog parts of a reply to a SUBSCRIBE, plus its Expires,
/// Min-Expires and Retry-After.
///
/// # Safety
/// As [`reply_info`].
pub unsafe fn sub_reply_info(msg: *mut sip_msg, code: i32) -> pua_core::subscribe::SubReplyInfo {
    let base = reply_info(msg, code);
    let mut d = shim::ReplyDlg::default();
    let mut info = pua_core::subscribe::SubReplyInfo {
        code: base.code,
        expires: base.expires.map(Cow::into_owned),
        min_expires: base.min_expires.map(Cow::into_owned),
        retry_after: base.retry_after.map(Cow::into_owned),
        ..Default::default()
    };
    if shim::pua_shim_reply_dialog(msg, &mut d) == 0 {
        info.to_tag = str_bytes(&d.to_tag).to_vec();
        info.contact = str_bytes(&d.contact).to_vec();
        info.record_route = str_bytes(&d.record_route).to_vec();
        info.cseq = (d.has_cseq != 0).then_some(d.cseq);
        if !d.record_route.s.is_null() {
            shim::pua_shim_pkg_free(d.record_route.s.cast());
        }
    }
    info
}

/// The dialog parts of an in-dialog request (a NOTIFY).
pub struct RequestDialog {
    pub from_uri: Vec<u8>,
    pub to_uri: Vec<u8>,
    pub call_id: Vec<u8>,
    pub from_tag: Vec<u8>,
    pub to_tag: Vec<u8>,
    pub contact: Vec<u8>,
}

/// Reads Call-ID, tags and Contact of a request; None if it cannot be parsed.
///
/// # Safety
/// `msg` must be the request being routed.
pub unsafe fn request_dialog(msg: *mut sip_msg) -> Option<RequestDialog> {
    let mut d = shim::RequestDlg::default();
    if shim::pua_shim_request_dialog(msg, &mut d) < 0 {
        return None;
    }
    Some(RequestDialog {
        from_uri: str_bytes(&d.from_uri).to_vec(),
        to_uri: str_bytes(&d.to_uri).to_vec(),
        call_id: str_bytes(&d.call_id).to_vec(),
        from_tag: str_bytes(&d.from_tag).to_vec(),
        to_tag: str_bytes(&d.to_tag).to_vec(),
        contact: str_bytes(&d.contact).to_vec(),
    })
}
