//! Pure logic of the PUBLISH engine (RFC 3903): the headers of a request,
//! the Expires values, and what a reply means. The engine itself (tm,
//! table, callbacks) is in the `pua` crate's `publish` module.

use std::borrow::Cow;

/// What a PUBLISH does to its publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A new publication (no SIP-If-Match, with a body).
    Initial = 1,
    /// New state for an existing publication (If-Match and a body).
    Modify = 2,
    /// Extends an existing publication (If-Match, no body).
    Refresh = 3,
    /// Ends it (If-Match, Expires: 0, no body).
    Remove = 4,
}

impl Kind {
    pub fn from_u32(v: u32) -> Option<Kind> {
        match v {
            1 => Some(Kind::Initial),
            2 => Some(Kind::Modify),
            3 => Some(Kind::Refresh),
            4 => Some(Kind::Remove),
            _ => None,
        }
    }
}

/// Max-Forwards of the requests we originate (hash.h's MAX_FORWARD).
pub const MAX_FORWARDS: u32 = 70;

/// The Expires to ask for: `publ->expires` -1 means `default_expires`, 0
/// removes, anything else is asked as is but not below `min_expires`.
/// (The C module asks one second more than it was asked.)
pub fn asked_expires(publ_expires: i32, default_expires: u32, min_expires: u32) -> u32 {
    match publ_expires {
        0 => 0,
        e if e < 0 => default_expires.max(min_expires).max(1),
        e => (e as u32).max(min_expires),
    }
}

/// `desired_expires` of a record: when the consumer wants it to end
/// (absolute), 0 for "until removed".
pub fn desired_expires(publ_expires: i32, now: u32) -> u32 {
    if publ_expires < 0 {
        0
    } else {
        now.saturating_add(publ_expires as u32)
    }
}

/// The Expires of a refresh: what is left of the desired lifetime, or
/// `default_expires` for a publication that lives until removed.
pub fn refresh_expires(desired: u32, now: u32, default_expires: u32, min_expires: u32) -> u32 {
    if desired == 0 {
        default_expires
    } else {
        desired.saturating_sub(now).max(min_expires).max(1)
    }
}

/// Whether the cleanup pass should refresh a record (rather than let it run
/// out): it ends within `update_period` and its consumer wants it longer.
pub fn needs_refresh(
    expires: u32,
    desired: u32,
    now: u32,
    update_period: u32,
    min_expires: u32,
) -> bool {
    expires.saturating_sub(update_period) < now
        && (desired == 0 || desired > expires.saturating_add(min_expires))
}

/// The headers of a PUBLISH (CRLF after each; no fixed-size buffer).
pub fn build_headers(
    event: &[u8],
    expires: u32,
    etag: Option<&[u8]>,
    content_type: Option<&[u8]>,
    extra_headers: Option<&[u8]>,
) -> Vec<u8> {
    let mut h = Vec::new();
    build_headers_into(&mut h, event, expires, etag, content_type, extra_headers);
    h
}

/// [`build_headers`] into `h` (cleared first; its capacity is reused).
pub fn build_headers_into(
    h: &mut Vec<u8>,
    event: &[u8],
    expires: u32,
    etag: Option<&[u8]>,
    content_type: Option<&[u8]>,
    extra_headers: Option<&[u8]>,
) {
    h.clear();
    h.reserve(
        96 + event.len()
            + etag.map_or(0, <[u8]>::len)
            + content_type.map_or(0, <[u8]>::len)
            + extra_headers.map_or(0, <[u8]>::len),
    );
    h.extend_from_slice(b"Max-Forwards: ");
    push_decimal(h, MAX_FORWARDS);
    h.extend_from_slice(b"\r\nEvent: ");
    h.extend_from_slice(event);
    h.extend_from_slice(b"\r\nExpires: ");
    push_decimal(h, expires);
    h.extend_from_slice(b"\r\n");
    if let Some(e) = etag {
        h.extend_from_slice(b"SIP-If-Match: ");
        h.extend_from_slice(e);
        h.extend_from_slice(b"\r\n");
    }
    if let Some(ct) = content_type {
        h.extend_from_slice(b"Content-Type: ");
        h.extend_from_slice(ct);
        h.extend_from_slice(b"\r\n");
    }
    if let Some(x) = extra_headers.filter(|x| !x.is_empty()) {
        h.extend_from_slice(x);
        if !x.ends_with(b"\r\n") {
            h.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends `v` in decimal (no `format!` on the hot path).
pub fn push_decimal(h: &mut Vec<u8>, mut v: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    h.extend_from_slice(&buf[i..]);
}

/// Parses a delta-seconds header value (Expires, Min-Expires, Retry-After's
/// leading number): digits only, surrounding whitespace allowed; anything
/// else (`banana`, `-5`, empty) is `None`.
pub fn parse_delta_seconds(v: &[u8]) -> Option<u32> {
    let v = trim(v);
    // Retry-After may carry a comment or parameters after the number.
    let end = v
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(v.len());
    let (digits, rest) = v.split_at(end);
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let rest = trim(rest);
    if !(rest.is_empty() || rest.starts_with(b"(") || rest.starts_with(b";")) {
        return None;
    }
    // At most 10 digits: no overflow in u64.
    let n = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some(n.min(u32::MAX as u64) as u32)
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |p| p + 1);
    &v[s..e]
}

/// The parts of a reply the engine looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyInfo<'a> {
    pub code: u32,
    /// Raw header values (None when the header is absent), borrowed from
    /// the reply while tm's callback runs.
    pub expires: Option<Cow<'a, [u8]>>,
    pub etag: Option<Cow<'a, [u8]>>,
    pub min_expires: Option<Cow<'a, [u8]>>,
    pub retry_after: Option<Cow<'a, [u8]>>,
}

/// The PUBLISH-relevant headers of a reply read straight from its bytes
/// (`buf`: the whole message, status line first), without Kamailio's
/// parser: used when no consumer callback will look at the reply, since
/// `parse_headers(.., HDR_EOH_F)` of every header was half the cost of the
/// reply callback. Values are what Kamailio's `hdr->body` holds: after the
/// colon, leading and trailing whitespace removed, folded lines kept; the
/// first of several headers wins. `None` when the header section is not
/// well-formed (a line without a colon, no end): the caller then takes
/// Kamailio's parser, which reports the error.
pub fn scan_reply_headers(code: u32, buf: &[u8]) -> Option<ReplyInfo<'_>> {
    let mut info = ReplyInfo {
        code,
        ..Default::default()
    };
    // The status line.
    let mut pos = memchr::memchr(b'\n', buf)? + 1;
    loop {
        let rest = buf.get(pos..)?;
        // End of the header section: an empty line (CRLF or a bare LF).
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return Some(info);
        }
        if rest.is_empty() {
            return None;
        }
        // The header's extent: up to a line end not followed by SP/HT.
        let mut end = 0;
        loop {
            end += memchr::memchr(b'\n', &rest[end..])? + 1;
            if !matches!(rest.get(end), Some(b' ') | Some(b'\t')) {
                break;
            }
        }
        let line = &rest[..end];
        let colon = memchr::memchr(b':', line)?;
        let name = trim(&line[..colon]);
        if name.is_empty() || name.iter().any(|c| c.is_ascii_whitespace()) {
            return None;
        }
        // Only four names matter; the others are skipped without trimming
        // their values (every one of the four starts with E, S, M or R).
        if matches!(name[0] | 0x20, b'e' | b's' | b'm' | b'r') {
            info.offer(name, trim(&line[colon + 1..]));
        }
        pos += end;
    }
}

impl<'a> ReplyInfo<'a> {
    /// Takes a header's value if it is one of the four and the first of its
    /// name (names compared case-insensitively).
    pub fn offer(&mut self, name: &[u8], value: &'a [u8]) {
        let slot = if name.eq_ignore_ascii_case(b"Expires") {
            &mut self.expires
        } else if name.eq_ignore_ascii_case(b"SIP-ETag") {
            &mut self.etag
        } else if name.eq_ignore_ascii_case(b"Min-Expires") {
            &mut self.min_expires
        } else if name.eq_ignore_ascii_case(b"Retry-After") {
            &mut self.retry_after
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(Cow::Borrowed(value));
        }
    }
}

/// Retries we allow per request for 412, 423 and 5xx.
pub const MAX_RETRIES: u32 = 3;
/// The longest Retry-After we wait for; above it the failure is final.
pub const MAX_RETRY_AFTER: u32 = 3600;

/// What to do with a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// 2xx with a usable Expires (> 0) and SIP-ETag: store them.
    Stored { etag: &'a [u8], expires: u32 },
    /// 2xx with Expires: 0: the publication is gone.
    Removed,
    /// No reply (tm's local timeout): keep the record, retry at the next pass.
    LocalTimeout,
    /// 412: the server lost the publication: publish it anew (initial).
    Republish,
    /// 423: ask again with this Expires.
    RetryWithExpires(u32),
    /// 5xx with Retry-After: send again after this many seconds.
    RetryAfter(u32),
    /// Anything else: the publication failed; delete it.
    Failed { reason: String },
}

/// Classifies a reply to a PUBLISH of kind `kind` that has been retried
/// `retries` times (`had_423`: one of them answered a 423, which is retried
/// only once). `None` info means tm's FAKED_REPLY (no reply).
pub fn classify<'a>(
    info: Option<&'a ReplyInfo<'_>>,
    kind: Kind,
    retries: u32,
    had_423: bool,
) -> Outcome<'a> {
    let Some(r) = info else {
        return Outcome::LocalTimeout;
    };
    let can_retry = retries < MAX_RETRIES;
    match r.code {
        200..=299 => {
            let Some(exp_raw) = r.expires.as_deref() else {
                return Outcome::Failed {
                    reason: format!("{} without Expires", r.code),
                };
            };
            let Some(exp) = parse_delta_seconds(exp_raw) else {
                return Outcome::Failed {
                    reason: format!(
                        "{} with an unparsable Expires '{}'",
                        r.code,
                        String::from_utf8_lossy(exp_raw)
                    ),
                };
            };
            if exp == 0 {
                return Outcome::Removed;
            }
            match r.etag.as_deref().map(trim) {
                Some(e) if !e.is_empty() => Outcome::Stored {
                    etag: e,
                    expires: exp,
                },
                _ => Outcome::Failed {
                    reason: format!("{} without SIP-ETag", r.code),
                },
            }
        }
        412 if kind != Kind::Remove && kind != Kind::Initial && can_retry => Outcome::Republish,
        423 if can_retry && !had_423 => {
            match r.min_expires.as_deref().and_then(parse_delta_seconds) {
                Some(m) if m > 0 => Outcome::RetryWithExpires(m),
                _ => Outcome::Failed {
                    reason: "423 without a usable Min-Expires".into(),
                },
            }
        }
        500..=599 if can_retry => match r.retry_after.as_deref().and_then(parse_delta_seconds) {
            Some(s) if s <= MAX_RETRY_AFTER => Outcome::RetryAfter(s),
            _ => Outcome::Failed {
                reason: format!("{} without a usable Retry-After", r.code),
            },
        },
        c => Outcome::Failed {
            reason: format!("final reply {c}"),
        },
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    #[test]
    fn reads_the_publish_headers_as_kamailio_stores_them() {
        let m = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n\
            sip-etag :  a.123.4  \r\nEXPIRES:3600\r\nExpires: 7\r\n\
            Retry-After: 5\r\n (comment)\r\nContent-Length: 0\r\n\r\n";
        let i = scan_reply_headers(200, m).expect("well-formed");
        assert_eq!(i.code, 200);
        assert_eq!(i.etag.as_deref(), Some(&b"a.123.4"[..]));
        assert_eq!(
            i.expires.as_deref(),
            Some(&b"3600"[..]),
            "the first Expires"
        );
        assert_eq!(
            i.retry_after.as_deref(),
            Some(&b"5\r\n (comment)"[..]),
            "folded"
        );
        assert_eq!(i.min_expires, None);
        // Bare LF line ends, a body after the headers.
        let m = b"SIP/2.0 423 Too Brief\nMin-Expires: 1800\nContent-Length: 5\n\nExpires: 1";
        let i = scan_reply_headers(423, m).unwrap();
        assert_eq!(i.min_expires.as_deref(), Some(&b"1800"[..]));
        assert_eq!(i.expires, None, "nothing from the body");
        // An empty value is present and empty (classify refuses it).
        let i = scan_reply_headers(200, b"SIP/2.0 200 OK\r\nExpires:\r\n\r\n").unwrap();
        assert_eq!(i.expires.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn malformed_header_sections_are_left_to_kamailio() {
        for m in [
            &b"SIP/2.0 200 OK\r\nExpires 3600\r\n\r\n"[..],
            b"SIP/2.0 200 OK\r\nExpires: 3600\r\n",
            b"SIP/2.0 200 OK",
            b"SIP/2.0 200 OK\r\nSIP ETag: x\r\n\r\n",
            b"",
        ] {
            assert_eq!(
                scan_reply_headers(200, m),
                None,
                "{:?}",
                String::from_utf8_lossy(m)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_values() {
        assert_eq!(asked_expires(-1, 3600, 0), 3600);
        assert_eq!(asked_expires(0, 3600, 300), 0, "removal always asks 0");
        assert_eq!(asked_expires(120, 3600, 0), 120, "no +1");
        assert_eq!(asked_expires(120, 3600, 300), 300);
        assert_eq!(desired_expires(-1, 1000), 0);
        assert_eq!(desired_expires(60, 1000), 1060);
        assert_eq!(refresh_expires(0, 1000, 3600, 0), 3600);
        assert_eq!(refresh_expires(1500, 1000, 3600, 0), 500);
        assert_eq!(refresh_expires(900, 1000, 3600, 0), 1);
    }

    #[test]
    fn refresh_decision() {
        // Ends within the period and wanted for ever.
        assert!(needs_refresh(1050, 0, 1000, 100, 0));
        // Ends later than a period away.
        assert!(!needs_refresh(1200, 0, 1000, 100, 0));
        // Wanted only until it ends anyway.
        assert!(!needs_refresh(1050, 1050, 1000, 100, 0));
        assert!(needs_refresh(1050, 2000, 1000, 100, 0));
    }

    #[test]
    fn headers() {
        let h = build_headers(b"presence", 3600, None, Some(b"application/pidf+xml"), None);
        assert_eq!(
            h,
            b"Max-Forwards: 70\r\nEvent: presence\r\nExpires: 3600\r\nContent-Type: application/pidf+xml\r\n"
        );
        let long = vec![b'x'; 10_000];
        let h = build_headers(b"dialog", 0, Some(&long), None, Some(b"X-A: 1"));
        let s = String::from_utf8(h).unwrap();
        assert!(s.contains("Expires: 0\r\n"));
        assert!(s.contains(&format!("SIP-If-Match: {}\r\n", "x".repeat(10_000))));
        assert!(s.ends_with("X-A: 1\r\n"));
        assert!(!s.contains("Content-Type"));
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_delta_seconds(b" 3600 "), Some(3600));
        assert_eq!(parse_delta_seconds(b"0"), Some(0));
        assert_eq!(parse_delta_seconds(b"banana"), None);
        assert_eq!(parse_delta_seconds(b"12banana"), None);
        assert_eq!(parse_delta_seconds(b"-5"), None);
        assert_eq!(parse_delta_seconds(b""), None);
        assert_eq!(parse_delta_seconds(b"120 (maintenance)"), Some(120));
        assert_eq!(parse_delta_seconds(b"30;duration=60"), Some(30));
        assert_eq!(parse_delta_seconds(b"99999999999"), None);
        assert_eq!(parse_delta_seconds(b"9999999999"), Some(u32::MAX));
        assert_eq!(parse_delta_seconds(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_delta_seconds(b"0012"), Some(12));
    }

    fn reply(code: u32) -> ReplyInfo<'static> {
        ReplyInfo {
            code,
            ..Default::default()
        }
    }

    #[test]
    fn classify_replies() {
        let mut ok = reply(200);
        ok.expires = Some(Cow::Borrowed(&b"3600"[..]));
        ok.etag = Some(Cow::Borrowed(&b"abc"[..]));
        assert_eq!(
            classify(Some(&ok), Kind::Initial, 0, false),
            Outcome::Stored {
                etag: b"abc",
                expires: 3600
            }
        );
        ok.expires = Some(Cow::Borrowed(&b"0"[..]));
        assert_eq!(
            classify(Some(&ok), Kind::Remove, 0, false),
            Outcome::Removed
        );
        ok.expires = Some(Cow::Borrowed(&b"banana"[..]));
        assert!(matches!(
            classify(Some(&ok), Kind::Modify, 0, false),
            Outcome::Failed { .. }
        ));
        ok.expires = None;
        assert!(matches!(
            classify(Some(&ok), Kind::Modify, 0, false),
            Outcome::Failed { .. }
        ));
        ok.expires = Some(Cow::Borrowed(&b"60"[..]));
        ok.etag = None;
        assert!(matches!(
            classify(Some(&ok), Kind::Modify, 0, false),
            Outcome::Failed { .. }
        ));

        assert_eq!(
            classify(None, Kind::Refresh, 0, false),
            Outcome::LocalTimeout
        );
        assert_eq!(
            classify(Some(&reply(412)), Kind::Refresh, 0, false),
            Outcome::Republish
        );
        assert_eq!(
            classify(Some(&reply(412)), Kind::Modify, 2, false),
            Outcome::Republish
        );
        assert!(
            matches!(
                classify(Some(&reply(412)), Kind::Modify, 3, false),
                Outcome::Failed { .. }
            ),
            "bounded"
        );
        assert!(matches!(
            classify(Some(&reply(412)), Kind::Remove, 0, false),
            Outcome::Failed { .. }
        ));

        let mut r = reply(423);
        r.min_expires = Some(Cow::Borrowed(&b"1800"[..]));
        assert_eq!(
            classify(Some(&r), Kind::Initial, 0, false),
            Outcome::RetryWithExpires(1800)
        );
        assert!(
            matches!(
                classify(Some(&r), Kind::Initial, 1, true),
                Outcome::Failed { .. }
            ),
            "423 retried once"
        );
        r.min_expires = None;
        assert!(matches!(
            classify(Some(&r), Kind::Initial, 0, false),
            Outcome::Failed { .. }
        ));

        let mut r = reply(503);
        r.retry_after = Some(Cow::Borrowed(&b"5"[..]));
        assert_eq!(
            classify(Some(&r), Kind::Refresh, 1, false),
            Outcome::RetryAfter(5)
        );
        assert!(matches!(
            classify(Some(&r), Kind::Refresh, 3, false),
            Outcome::Failed { .. }
        ));
        r.retry_after = None;
        assert!(matches!(
            classify(Some(&r), Kind::Refresh, 0, false),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            classify(Some(&reply(404)), Kind::Initial, 0, false),
            Outcome::Failed { .. }
        ));
    }
}
