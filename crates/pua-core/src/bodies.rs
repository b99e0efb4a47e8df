//! The body processors of the built-in pua events: what `send_publish` does
//! to a PUBLISH body before sending it, as Kamailio 5.6.3's `add_events.c`
//! does, as pure functions over bytes (libxml2 does the XML, as in C).
//!
//! `send_publish` calls the event's processor with the body, the record's
//! version counter (`ver`: 0 for a new record, else the stored version after
//! its increment) and the tuple id stored for the record (`None` for a new
//! record or when none is stored). It sends the body the processor returns
//! and keeps the tuple id in the record (through the callback parameter).
//!
//! Which processor each event gets (C's `pua_add_events`, mirrored by
//! [`crate::events::builtin_events`]):
//!
//! | event             | processor                                                    |
//! |-------------------|--------------------------------------------------------------|
//! | `presence`        | [`presence`]                                                 |
//! | `dialog`          | [`dialog_info_version`] if `dlginfo_increase_version`, else [`passthrough`] |
//! | `dialog;sla`      | [`dialog_info_version`] (C's `bla_process_body`), always     |
//! | `message-summary` | [`passthrough`] (C's `mwi_process_body`)                     |
//! | `reg`             | [`reginfo_version`] if `reginfo_increase_version`, else [`passthrough`] |
//! | `presence.winfo`, `xcap-diff` | none (C registers a NULL processor)               |
//!
//! For `reg`, 5.6.3 looks at `dlginfo_increase_version`; we follow upstream's
//! fix (GH #3234) and look at `reginfo_increase_version`.
//!
//! Differences from C, all on inputs where C misbehaves:
//! - an `id=""` attribute (tuple or person) counts as absent and is
//!   replaced, where C keeps it: an empty tuple id, which `send_publish`
//!   then treats as none stored, and an invalid `xs:ID`;
//! - a stored tuple id of 50 bytes or more is applied, where C overflows a
//!   50-byte stack buffer;
//! - a generated tuple id is unique per record and a valid `xs:ID`
//!   ([`generate_tuple_id`]), where C prints the address of the caller's
//!   `publ_info_t` (often on the stack, so equal for different records);
//! - a failed serialisation is an error, where the dialog/reginfo processors
//!   of C return success with a NULL body;
//! - the parser never touches the network nor prints to stderr, and we never
//!   call `xmlCleanupParser` (C does, after every presence/dialog body,
//!   under any other libxml2 user in the process);
//! - a `ver` is printed as the unsigned number it is (C passes an `int`
//!   to `int2str`, so a negative one would print as a huge unsigned long).

use crate::libxml::{attr_content_by_name, doc_node_by_name};
use crate::sys::{
    xmlChar, xmlDoc, xmlDocDumpFormatMemory, xmlFreeDoc, xmlFreeFunc, xmlInitParser, xmlMemGet,
    xmlNode, xmlReadMemory, xmlSetProp,
};
use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// libxml2's `XML_PARSE_NOERROR`: no error reports (on stderr).
const XML_PARSE_NOERROR: c_int = 1 << 5;
/// libxml2's `XML_PARSE_NOWARNING`: no warning reports.
const XML_PARSE_NOWARNING: c_int = 1 << 6;
/// libxml2's `XML_PARSE_NONET`: no network access (external DTDs, entities).
const XML_PARSE_NONET: c_int = 1 << 11;
/// Our parse options. No entity substitution, no DTD loading, blanks kept:
/// otherwise libxml2's defaults, as C's `xmlParseMemory`.
const PARSE_OPTIONS: c_int = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;

/// A tuple id taken from a body is refused from this length on, as in C
/// (whose buffer is 50 bytes); the `pua` table's column is 64 wide.
pub const MAX_TUPLE_ID_LEN: usize = 49;

/// Why a body could not be processed. C logs and fails the PUBLISH alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The body is empty.
    Empty,
    /// The body is longer than libxml2 accepts (`int` length).
    TooLarge(usize),
    /// libxml2 could not parse the body (not well-formed XML).
    Malformed,
    /// The document has no element of this name (`tuple`, `dialog-info`,
    /// `reginfo`).
    MissingElement(&'static str),
    /// The `tuple` element's id (taken from the body, nothing stored) is
    /// longer than [`MAX_TUPLE_ID_LEN`]; the length is given.
    TupleIdTooLong(usize),
    /// The tuple id to apply contains a NUL byte.
    InvalidTupleId,
    /// libxml2 failed on an operation (named) that should not fail: out of
    /// memory in practice.
    Xml(&'static str),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Empty => write!(f, "empty body"),
            BodyError::TooLarge(n) => write!(f, "body too large for libxml2 ({n} bytes)"),
            BodyError::Malformed => {
                write!(f, "while parsing xml memory: body is not well-formed XML")
            }
            BodyError::MissingElement(name) => write!(f, "no <{name}> element in the body"),
            BodyError::TupleIdTooLong(n) => {
                write!(
                    f,
                    "tuple id is too long ({n} bytes, at most {MAX_TUPLE_ID_LEN})"
                )
            }
            BodyError::InvalidTupleId => write!(f, "tuple id contains a NUL byte"),
            BodyError::Xml(what) => write!(f, "libxml2 failed: {what}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// What a processor hands back to `send_publish`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Processed<'a> {
    /// The body to send. `Borrowed` is the input unchanged (C's processors
    /// that return 0 and hand back `publ->body`); `Owned` is a new document,
    /// serialised as C does (`xmlDocDumpFormatMemory`, format 1: with an XML
    /// declaration and a final newline).
    pub body: Cow<'a, [u8]>,
    /// [`presence`]: always `Some`, the tuple id the record keeps after this
    /// PUBLISH, as C leaves `*tuple_param`: the stored one when one was
    /// given, else the id found in the body or the generated one (new: the
    /// caller stores it). The other processors: `None`, they leave the
    /// record's tuple id (stored or not) alone, as in C.
    pub tuple_id: Option<Vec<u8>>,
}

impl Processed<'_> {
    /// Whether the body was rewritten (C's processors return 1 then, 0 when
    /// they hand back the input).
    pub fn is_rewritten(&self) -> bool {
        matches!(self.body, Cow::Owned(_))
    }
}

/// Runs the processor `p` of [`crate::events::Processor`]:
/// `Presence` → [`presence`]; `DialogVersioned` and `Bla` →
/// [`dialog_info_version`]; `ReginfoVersioned` → [`reginfo_version`];
/// `Dialog`, `Mwi` → [`passthrough`]. `None` (the events C registers with a
/// NULL processor, on which C would crash given a body) passes the body
/// through as well.
pub fn process<'a>(
    p: crate::events::Processor,
    body: &'a [u8],
    ver: u32,
    stored_tuple: Option<&[u8]>,
) -> Result<Processed<'a>, BodyError> {
    use crate::events::Processor as P;
    match p {
        P::Presence => presence(body, stored_tuple),
        P::DialogVersioned | P::Bla => dialog_info_version(body, ver),
        P::ReginfoVersioned => reginfo_version(body, ver),
        P::Dialog | P::Mwi | P::None => Ok(passthrough(body)),
    }
}

/// C's `mwi_process_body` and `dlg_process_body` (message-summary; dialog
/// and reg without version increase): the body is sent as it is, never
/// looked at, the tuple id untouched. Never fails.
pub fn passthrough(body: &[u8]) -> Processed<'_> {
    Processed {
        body: Cow::Borrowed(body),
        tuple_id: None,
    }
}

/// C's `pres_process_body` (presence, application/pidf+xml).
///
/// The first element named `tuple` (in document order, any namespace, name
/// compared case-insensitively as C does) must exist. Its `id` attribute
/// (name case-insensitive; an empty value counts as absent, unlike C):
/// - present: kept in the body. Without a stored id it becomes the record's
///   tuple id, and must be at most [`MAX_TUPLE_ID_LEN`] bytes long; with a
///   stored id the stored one stays the record's (the body is not changed).
/// - absent: set to the stored id, or, with none stored, to a new one from
///   [`generate_tuple_id`], which becomes the record's.
///
/// Then the first element named `person` (if any) without an `id` gets the
/// tuple element's id (the same value, as in C). The document is serialised
/// again whether or not anything changed, as C does.
///
/// `stored_tuple`: the id stored for the record; `Some(b"")` counts as none
/// (C only passes a stored id of non-zero length).
pub fn presence(body: &[u8], stored_tuple: Option<&[u8]>) -> Result<Processed<'static>, BodyError> {
    let stored = stored_tuple.filter(|t| !t.is_empty());
    if let Some(p) = presence_fast(body, stored) {
        return Ok(p);
    }
    presence_libxml(body, stored)
}

/// [`presence`] through a libxml2 document: every body the fast path does
/// not take.
fn presence_libxml(body: &[u8], stored: Option<&[u8]>) -> Result<Processed<'static>, BodyError> {
    let doc = XmlDoc::parse(body)?;
    let tuple = doc
        .find(c"tuple")
        .ok_or(BodyError::MissingElement("tuple"))?;
    let (tuple_id, record_id) = match attr(tuple, c"id") {
        Some(id) => {
            let record = match stored {
                Some(s) => s.to_vec(),
                None if id.len() > MAX_TUPLE_ID_LEN => {
                    return Err(BodyError::TupleIdTooLong(id.len()))
                }
                None => id.clone(),
            };
            (id, record)
        }
        None => {
            let id = match stored {
                Some(s) => s.to_vec(),
                None => generate_tuple_id().into_bytes(),
            };
            set_attr(tuple, c"id", &id)?;
            (id.clone(), id)
        }
    };
    if let Some(person) = doc.find(c"person") {
        if attr(person, c"id").is_none() {
            set_attr(person, c"id", &tuple_id)?;
        }
    }
    Ok(Processed {
        body: Cow::Owned(doc.dump()?),
        tuple_id: Some(record_id),
    })
}

/// C's `bla_process_body` (dialog;sla always, dialog with
/// `dlginfo_increase_version`): the `version` attribute of the first element
/// named `dialog-info` (document order, any namespace, case-insensitive) is
/// set to `ver` (replaced, or added when absent), and the document
/// serialised again. Nothing else changes (not `state`, not `entity`); the
/// tuple id is not involved.
pub fn dialog_info_version(body: &[u8], ver: u32) -> Result<Processed<'static>, BodyError> {
    set_version(body, c"dialog-info", "dialog-info", ver)
}

/// C's `reginfo_process_body` (reg with version increase): as
/// [`dialog_info_version`] on the first element named `reginfo`.
pub fn reginfo_version(body: &[u8], ver: u32) -> Result<Processed<'static>, BodyError> {
    set_version(body, c"reginfo", "reginfo", ver)
}

fn set_version(
    body: &[u8],
    elem: &CStr,
    name: &'static str,
    ver: u32,
) -> Result<Processed<'static>, BodyError> {
    let doc = XmlDoc::parse(body)?;
    let node = doc.find(elem).ok_or(BodyError::MissingElement(name))?;
    set_attr(node, c"version", ver.to_string().as_bytes())?;
    Ok(Processed {
        body: Cow::Owned(doc.dump()?),
        tuple_id: None,
    })
}

/// A new tuple id for a record that has none: `pua<pid>-<time>-<n>` in
/// lower-case hex (process id, seconds since the epoch, a per-process
/// counter), at most 45 bytes. Unique across the worker processes, restarts
/// (a pid is not reused within the second) and calls, and a valid `xs:ID`
/// (RFC 3863 types `tuple/@id` so; C's `0x…` starts with a digit). It is stable for the record because
/// `send_publish` stores it and hands it back as the stored id.
pub fn generate_tuple_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(48);
    out.push_str("pua");
    push_hex(&mut out, u64::from(crate::pid::process_id()));
    out.push('-');
    push_hex(&mut out, crate::local::coarse_secs());
    out.push('-');
    push_hex(&mut out, n);
    out
}

/// Appends `v` in lower-case hex without leading zeros (as `{:x}`).
fn push_hex(out: &mut String, v: u64) {
    let digits = (64 - (v | 1).leading_zeros()).div_ceil(4);
    for i in (0..digits).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        out.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
    }
}

/// A parsed libxml2 document, freed on drop.
struct XmlDoc(*mut xmlDoc);

impl XmlDoc {
    /// Parses `body` without network access nor error output.
    fn parse(body: &[u8]) -> Result<XmlDoc, BodyError> {
        if body.is_empty() {
            return Err(BodyError::Empty);
        }
        let len = c_int::try_from(body.len()).map_err(|_| BodyError::TooLarge(body.len()))?;
        static INIT: Once = Once::new();
        // SAFETY: xmlInitParser takes no argument; libxml2 asks for it to be
        // called once before parsing from several threads.
        INIT.call_once(|| unsafe { xmlInitParser() });
        // SAFETY: `body` is valid for `len` bytes (it need not be NUL-terminated);
        // URL and encoding may be null. The result is null or a document we own.
        let doc = unsafe {
            xmlReadMemory(
                body.as_ptr() as *const c_char,
                len,
                ptr::null(),
                ptr::null(),
                PARSE_OPTIONS,
            )
        };
        if doc.is_null() {
            Err(BodyError::Malformed)
        } else {
            Ok(XmlDoc(doc))
        }
    }

    /// The first node named `name` (case-insensitive, any namespace), as C's
    /// `xmlDocGetNodeByName(doc, name, NULL)`.
    fn find(&self, name: &CStr) -> Option<*mut xmlNode> {
        // SAFETY: self.0 is a valid document; `name` is NUL-terminated, the
        // namespace null. The node lives as long as the document.
        let n = unsafe { doc_node_by_name(self.0, name.as_ptr(), ptr::null()) };
        (!n.is_null()).then_some(n)
    }

    /// The document serialised as C does (`xmlDocDumpFormatMemory`, format 1).
    fn dump(&self) -> Result<Vec<u8>, BodyError> {
        let mut mem: *mut xmlChar = ptr::null_mut();
        let mut size: c_int = 0;
        // SAFETY: self.0 is a valid document; both out-pointers are valid.
        unsafe { xmlDocDumpFormatMemory(self.0, &mut mem, &mut size, 1) };
        let out = match usize::try_from(size) {
            Ok(n) if n > 0 && !mem.is_null() => {
                // SAFETY: libxml2 wrote `size` bytes at `mem`.
                Ok(unsafe { std::slice::from_raw_parts(mem, n) }.to_vec())
            }
            _ => Err(BodyError::Xml("xmlDocDumpFormatMemory")),
        };
        // SAFETY: `mem` is null or allocated by libxml2, not used after this.
        unsafe { xml_free(mem as *mut c_void) };
        out
    }
}

impl Drop for XmlDoc {
    fn drop(&mut self) {
        // SAFETY: we own the document; no node of it outlives `self`.
        unsafe { xmlFreeDoc(self.0) }
    }
}

/// Frees memory libxml2 allocated, with libxml2's current free function.
///
/// # Safety
/// `p` null or allocated by libxml2 and not used afterwards.
unsafe fn xml_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    let mut free: xmlFreeFunc = None;
    // xmlMemGet accepts null for the functions we do not want.
    if xmlMemGet(&mut free, ptr::null_mut(), ptr::null_mut(), ptr::null_mut()) == 0 {
        if let Some(f) = free {
            f(p);
        }
    }
}

/// The value of attribute `name` of `node` (name case-insensitive), as C's
/// `xmlNodeGetAttrContentByName`; `None` when absent, and also when empty
/// (where C has "").
fn attr(node: *mut xmlNode, name: &CStr) -> Option<Vec<u8>> {
    // SAFETY: `node` is an element of a live document; `name` NUL-terminated.
    let v = unsafe { attr_content_by_name(node, name.as_ptr()) };
    if v.is_null() {
        return None;
    }
    // SAFETY: libxml2 returned a NUL-terminated string we own; freed once here.
    let bytes = unsafe {
        let b = CStr::from_ptr(v).to_bytes().to_vec();
        xml_free(v as *mut c_void);
        b
    };
    (!bytes.is_empty()).then_some(bytes)
}

/// Sets attribute `name` (no namespace) of `node` to `value`, replacing it.
fn set_attr(node: *mut xmlNode, name: &CStr, value: &[u8]) -> Result<(), BodyError> {
    let value = CString::new(value).map_err(|_| BodyError::InvalidTupleId)?;
    // SAFETY: `node` is an element of a live document; libxml2 copies both strings.
    let a = unsafe {
        xmlSetProp(
            node,
            name.as_ptr() as *const xmlChar,
            value.as_ptr() as *const xmlChar,
        )
    };
    if a.is_null() {
        Err(BodyError::Xml("xmlSetProp"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Processor;

    /// RFC 3863 section 4.4 example, plus an RFC 4479 person without an id.
    pub(super) const PIDF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
    xmlns:im="urn:ietf:params:xml:ns:pidf:im"
    xmlns:myex="http://id.example.com/presence/"
    entity="pres:someone@example.com">
  <tuple id="bs35r9">
    <status>
      <basic>open</basic>
      <im:im>busy</im:im>
      <myex:location>home</myex:location>
    </status>
    <contact priority="0.8">im:someone@mobilecarrier.net</contact>
    <note xml:lang="en">Don't Disturb Please!</note>
    <note xml:lang="fr">Ne derangez pas, s'il vous plait</note>
    <timestamp>2001-10-27T16:49:29Z</timestamp>
  </tuple>
  <tuple id="eg92n8">
    <status>
      <basic>open</basic>
    </status>
    <contact priority="1.0">mailto:someone@example.com</contact>
  </tuple>
  <note>I'll be in Tokyo next week</note>
</presence>
"#;

    /// A PIDF as pua_usrloc/pua_reginfo callers send it: tuple and person
    /// without ids.
    pub(super) const PIDF_NO_ID: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
    xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
    xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
    entity="sip:alice@example.com">
  <tuple>
    <status><basic>open</basic></status>
  </tuple>
  <dm:person>
    <rpid:activities><rpid:on-the-phone/></rpid:activities>
  </dm:person>
</presence>
"#;

    /// RFC 4235 section 6.2 example (partial dialog state).
    const DIALOG: &str = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
    version="1" state="partial"
    entity="sip:alice@example.com">
  <dialog id="as7d900as8" call-id="a84b4c76e66710" local-tag="1928301774"
      direction="initiator">
    <state event="replaced">terminated</state>
  </dialog>
  <dialog id="fkjh348f" call-id="a84b4c76e66710" local-tag="1928301774"
      remote-tag="hh76a" direction="initiator">
    <state>confirmed</state>
  </dialog>
</dialog-info>
"#;

    /// RFC 3680 section 6 example.
    const REGINFO: &str = r#"<?xml version="1.0"?>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
    version="0" state="full">
  <registration aor="sip:user@example.com" id="as9"
      state="active">
    <contact id="76" state="active" event="registered"
        duration-registered="7322"
        q="0.8">
      <uri>sip:user@pc887.example.com</uri>
    </contact>
    <contact id="77" state="terminated" event="expired"
        duration-registered="3600"
        q="0.5">
      <uri>sip:user@university.edu</uri>
    </contact>
  </registration>
</reginfo>
"#;

    /// RFC 3842 section 5.2 example.
    const MWI: &str = "Messages-Waiting: yes\r\n\
Message-Account: sip:alice@vmail.example.com\r\n\
Voice-Message: 2/8 (0/2)\r\n";

    fn text(p: &Processed<'_>) -> String {
        String::from_utf8(p.body.to_vec()).unwrap()
    }

    /// Parses a processed body again and returns the attribute `attr` of the
    /// first element `elem`, checking the output is well-formed.
    fn attr_of(body: &[u8], elem: &CStr, name: &CStr) -> Option<String> {
        let doc = XmlDoc::parse(body).expect("output is well-formed");
        let n = doc.find(elem)?;
        attr(n, name).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn presence_keeps_a_tuple_id_and_reports_it() {
        let p = presence(PIDF.as_bytes(), None).unwrap();
        assert_eq!(p.tuple_id.as_deref(), Some(&b"bs35r9"[..]));
        assert!(p.is_rewritten());
        assert_eq!(attr_of(&p.body, c"tuple", c"id").as_deref(), Some("bs35r9"));
        let t = text(&p);
        assert!(
            t.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
            "{t}"
        );
        assert!(t.contains("<tuple id=\"eg92n8\">"));
        assert!(t.contains("Don't Disturb Please!"));
    }

    #[test]
    fn presence_with_a_stored_id_keeps_the_body_id_and_the_stored_one() {
        let p = presence(PIDF.as_bytes(), Some(b"stored7")).unwrap();
        assert_eq!(p.tuple_id.as_deref(), Some(&b"stored7"[..]));
        assert_eq!(attr_of(&p.body, c"tuple", c"id").as_deref(), Some("bs35r9"));
        // A stored id longer than C's buffer is fine here.
        let long = [b'x'; 80];
        let p = presence(PIDF.as_bytes(), Some(&long)).unwrap();
        assert_eq!(p.tuple_id.as_deref(), Some(&long[..]));
    }

    #[test]
    fn presence_applies_the_stored_id_to_tuple_and_person() {
        let p = presence(PIDF_NO_ID.as_bytes(), Some(b"a1b2")).unwrap();
        assert_eq!(p.tuple_id.as_deref(), Some(&b"a1b2"[..]));
        assert_eq!(attr_of(&p.body, c"tuple", c"id").as_deref(), Some("a1b2"));
        assert_eq!(attr_of(&p.body, c"person", c"id").as_deref(), Some("a1b2"));
        assert!(text(&p).contains("<dm:person id=\"a1b2\">"), "{}", text(&p));
        // An empty stored id counts as none.
        let q = presence(PIDF_NO_ID.as_bytes(), Some(b"")).unwrap();
        assert_ne!(q.tuple_id.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn presence_generates_an_id_once_then_reuses_the_stored_one() {
        let first = presence(PIDF_NO_ID.as_bytes(), None).unwrap();
        let id = first.tuple_id.clone().unwrap();
        let id_s = String::from_utf8(id.clone()).unwrap();
        assert!(
            id_s.starts_with("pua") && id_s.len() <= MAX_TUPLE_ID_LEN,
            "{id_s}"
        );
        assert_eq!(
            attr_of(&first.body, c"tuple", c"id").as_deref(),
            Some(id_s.as_str())
        );
        assert_eq!(
            attr_of(&first.body, c"person", c"id").as_deref(),
            Some(id_s.as_str())
        );
        // The next PUBLISH of the record: send_publish hands back the stored id.
        let second = presence(PIDF_NO_ID.as_bytes(), Some(&id)).unwrap();
        assert_eq!(second.tuple_id.as_deref(), Some(&id[..]));
        assert_eq!(second.body, first.body);
        // Another record gets another id.
        let other = presence(PIDF_NO_ID.as_bytes(), None).unwrap();
        assert_ne!(other.tuple_id, first.tuple_id);
    }

    #[test]
    fn generated_ids_are_unique_ncnames() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| generate_tuple_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(id.as_bytes()[0].is_ascii_alphabetic());
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{id}"
            );
            assert!(id.len() <= 45);
        }
    }

    #[test]
    fn presence_person_id_is_kept_when_present() {
        let body = PIDF_NO_ID.replace("<dm:person>", "<dm:person id=\"p7\">");
        let p = presence(body.as_bytes(), Some(b"t9")).unwrap();
        assert_eq!(attr_of(&p.body, c"person", c"id").as_deref(), Some("p7"));
        assert_eq!(attr_of(&p.body, c"tuple", c"id").as_deref(), Some("t9"));
        // The person gets the body's tuple id when the tuple has one.
        let body = PIDF_NO_ID.replace("<tuple>", "<tuple id=\"tb\">");
        let p = presence(body.as_bytes(), Some(b"stored")).unwrap();
        assert_eq!(attr_of(&p.body, c"person", c"id").as_deref(), Some("tb"));
        assert_eq!(p.tuple_id.as_deref(), Some(&b"stored"[..]));
    }

    #[test]
    fn presence_attribute_names_compare_case_insensitively_like_c() {
        let body = PIDF_NO_ID
            .replace("<tuple>", "<TUPLE ID=\"up\">")
            .replace("</tuple>", "</TUPLE>");
        let p = presence(body.as_bytes(), None).unwrap();
        assert_eq!(p.tuple_id.as_deref(), Some(&b"up"[..]));
        assert!(!text(&p).contains("id=\"up\" id="));
    }

    #[test]
    fn presence_replaces_an_empty_id() {
        let body = PIDF_NO_ID.replace("<tuple>", "<tuple id=\"\">");
        let p = presence(body.as_bytes(), Some(b"s1")).unwrap();
        let t = text(&p);
        assert!(t.contains("<tuple id=\"s1\">"), "{t}");
        assert_eq!(
            t.matches(" id=").count(),
            2,
            "tuple and person once each: {t}"
        );
    }

    #[test]
    fn presence_refuses_a_long_body_id_without_stored_one() {
        let long = "y".repeat(MAX_TUPLE_ID_LEN + 1);
        let body = PIDF_NO_ID.replace("<tuple>", &format!("<tuple id=\"{long}\">"));
        assert_eq!(
            presence(body.as_bytes(), None),
            Err(BodyError::TupleIdTooLong(50))
        );
        let ok = "y".repeat(MAX_TUPLE_ID_LEN);
        let body = PIDF_NO_ID.replace("<tuple>", &format!("<tuple id=\"{ok}\">"));
        assert!(presence(body.as_bytes(), None).is_ok());
    }

    #[test]
    fn presence_errors() {
        assert_eq!(presence(b"", None), Err(BodyError::Empty));
        assert_eq!(
            presence(b"<presence><tuple id='x'>", None),
            Err(BodyError::Malformed)
        );
        assert_eq!(presence(b"not xml at all", None), Err(BodyError::Malformed));
        let no_tuple = br#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><note>x</note></presence>"#;
        assert_eq!(
            presence(no_tuple, None),
            Err(BodyError::MissingElement("tuple"))
        );
        assert_eq!(
            presence(PIDF_NO_ID.as_bytes(), Some(b"a\0b")),
            Err(BodyError::InvalidTupleId)
        );
        // A NUL inside the body is not XML.
        let mut nul = PIDF.as_bytes().to_vec();
        nul[60] = 0;
        assert_eq!(presence(&nul, None), Err(BodyError::Malformed));
        for e in [
            BodyError::Empty,
            BodyError::MissingElement("tuple"),
            BodyError::TupleIdTooLong(60),
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn dialog_version_is_set_to_ver() {
        let p = dialog_info_version(DIALOG.as_bytes(), 42).unwrap();
        assert_eq!(
            attr_of(&p.body, c"dialog-info", c"version").as_deref(),
            Some("42")
        );
        assert_eq!(p.tuple_id, None);
        let t = text(&p);
        assert_eq!(t.matches("version=\"42\"").count(), 1, "{t}");
        assert!(t.contains("state=\"partial\"") && t.contains("entity=\"sip:alice@example.com\""));
        assert!(t.contains("<dialog id=\"fkjh348f\""));
        // A new record: ver 0; a missing version attribute is added.
        let no_ver = DIALOG.replace("version=\"1\" ", "");
        let p = dialog_info_version(no_ver.as_bytes(), 0).unwrap();
        assert_eq!(
            attr_of(&p.body, c"dialog-info", c"version").as_deref(),
            Some("0")
        );
        assert_eq!(
            dialog_info_version(DIALOG.as_bytes(), u32::MAX).map(|p| attr_of(
                &p.body,
                c"dialog-info",
                c"version"
            )),
            Ok(Some("4294967295".into()))
        );
    }

    #[test]
    fn output_is_what_c_serialises() {
        // What xmlParseMemory + xmlSetProp + xmlDocDumpFormatMemory(.., 1)
        // give in C for this body (checked with a C program on libxml2 2.9.14).
        let input = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
    version="1" state="partial"
    entity="sip:alice@example.com">
  <dialog id="as7d900as8" call-id="a84b4c76e66710" local-tag="1928301774"
      direction="initiator">
    <state event="replaced">terminated</state>
  </dialog>
</dialog-info>
"#;
        let c = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="42" state="partial" entity="sip:alice@example.com">
  <dialog id="as7d900as8" call-id="a84b4c76e66710" local-tag="1928301774" direction="initiator">
    <state event="replaced">terminated</state>
  </dialog>
</dialog-info>
"#;
        assert_eq!(text(&dialog_info_version(input.as_bytes(), 42).unwrap()), c);
    }

    #[test]
    fn dialog_without_version_increase_passes_through() {
        let p = process(Processor::Dialog, DIALOG.as_bytes(), 42, None).unwrap();
        assert!(!p.is_rewritten());
        assert_eq!(&*p.body, DIALOG.as_bytes());
        assert_eq!(p.tuple_id, None);
        // Even something that is not XML: C does not look at it.
        assert_eq!(
            &*process(Processor::Dialog, b"<<<", 1, None).unwrap().body,
            b"<<<"
        );
    }

    #[test]
    fn dialog_errors() {
        assert_eq!(dialog_info_version(b"", 1), Err(BodyError::Empty));
        assert_eq!(
            dialog_info_version(b"<dialog-info version='1'>", 1),
            Err(BodyError::Malformed)
        );
        assert_eq!(
            dialog_info_version(REGINFO.as_bytes(), 1),
            Err(BodyError::MissingElement("dialog-info"))
        );
    }

    #[test]
    fn bla_sets_the_version_only() {
        let p = process(Processor::Bla, DIALOG.as_bytes(), 3, Some(b"t")).unwrap();
        assert_eq!(
            attr_of(&p.body, c"dialog-info", c"version").as_deref(),
            Some("3")
        );
        assert_eq!(
            attr_of(&p.body, c"dialog-info", c"entity").as_deref(),
            Some("sip:alice@example.com")
        );
        assert_eq!(
            attr_of(&p.body, c"dialog-info", c"state").as_deref(),
            Some("partial")
        );
    }

    #[test]
    fn reginfo_version_is_set_to_ver() {
        let p = reginfo_version(REGINFO.as_bytes(), 5).unwrap();
        assert_eq!(
            attr_of(&p.body, c"reginfo", c"version").as_deref(),
            Some("5")
        );
        assert_eq!(attr_of(&p.body, c"contact", c"id").as_deref(), Some("76"));
        assert_eq!(text(&p).matches("version=\"5\"").count(), 1);
        let p = process(Processor::ReginfoVersioned, REGINFO.as_bytes(), 9, None).unwrap();
        assert_eq!(
            attr_of(&p.body, c"reginfo", c"version").as_deref(),
            Some("9")
        );
        // Without the increase (Processor::Dialog for reg): untouched.
        let p = process(Processor::Dialog, REGINFO.as_bytes(), 9, None).unwrap();
        assert_eq!(&*p.body, REGINFO.as_bytes());
        assert_eq!(
            reginfo_version(DIALOG.as_bytes(), 1),
            Err(BodyError::MissingElement("reginfo"))
        );
        assert_eq!(reginfo_version(b"", 1), Err(BodyError::Empty));
        assert_eq!(reginfo_version(b"<reginfo", 1), Err(BodyError::Malformed));
    }

    #[test]
    fn mwi_passes_through() {
        let p = process(Processor::Mwi, MWI.as_bytes(), 4, None).unwrap();
        assert!(!p.is_rewritten());
        assert_eq!(&*p.body, MWI.as_bytes());
        assert_eq!(passthrough(MWI.as_bytes()), p);
        assert_eq!(
            &*process(Processor::None, b"x", 0, None).unwrap().body,
            b"x"
        );
    }

    #[test]
    fn dispatch_follows_the_processor() {
        let p = process(Processor::Presence, PIDF_NO_ID.as_bytes(), 7, Some(b"z")).unwrap();
        assert_eq!(attr_of(&p.body, c"tuple", c"id").as_deref(), Some("z"));
        let p = process(Processor::DialogVersioned, DIALOG.as_bytes(), 7, None).unwrap();
        assert_eq!(
            attr_of(&p.body, c"dialog-info", c"version").as_deref(),
            Some("7")
        );
        for e in crate::events::builtin_events(false, false) {
            if e.3 != Processor::Presence && e.3 != Processor::Bla {
                assert!(
                    !process(e.3, DIALOG.as_bytes(), 1, None)
                        .unwrap()
                        .is_rewritten(),
                    "{}",
                    e.1
                );
            }
        }
    }

    #[test]
    fn hostile_input_does_not_panic_nor_reach_out() {
        // External DTD and entity over the network: not fetched (NONET, no
        // DTD loading), the entity is not substituted.
        let xxe = br#"<?xml version="1.0"?>
<!DOCTYPE presence SYSTEM "http://192.0.2.1/pidf.dtd" [
  <!ENTITY ext SYSTEM "file:///etc/passwd">
]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><tuple><note>&ext;</note></tuple></presence>"#;
        let p = presence(xxe, Some(b"q")).unwrap();
        assert!(!text(&p).contains("root:"));
        // Entity expansion bomb: refused or bounded by libxml2.
        let mut bomb =
            String::from("<?xml version=\"1.0\"?><!DOCTYPE d [<!ENTITY a0 \"xxxxxxxxxx\">");
        for i in 1..12 {
            let prev = format!("&a{};", i - 1);
            bomb.push_str(&format!("<!ENTITY a{i} \"{}\">", prev.repeat(10)));
        }
        bomb.push_str("]><dialog-info version=\"1\">&a11;</dialog-info>");
        let _ = dialog_info_version(bomb.as_bytes(), 1);
        // Deep nesting.
        let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
        assert!(presence(deep.as_bytes(), None).is_err());
        // Truncations and byte mutations of real bodies.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for src in [PIDF, PIDF_NO_ID, DIALOG, REGINFO] {
            let b = src.as_bytes();
            for cut in (0..b.len()).step_by(7) {
                let _ = presence(&b[..cut], None);
                let _ = dialog_info_version(&b[..cut], 1);
                let _ = reginfo_version(&b[..cut], 1);
            }
            for _ in 0..300 {
                let mut m = b.to_vec();
                for _ in 0..4 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let i = (seed as usize) % m.len();
                    m[i] = (seed >> 32) as u8;
                }
                let _ = presence(&m, None);
                let _ = dialog_info_version(&m, 2);
                let _ = reginfo_version(&m, 2);
            }
        }
    }

    #[test]
    fn concurrent_use_from_threads() {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    for v in 0..50u32 {
                        let p = presence(PIDF_NO_ID.as_bytes(), None).unwrap();
                        assert!(p.tuple_id.is_some());
                        let d = dialog_info_version(DIALOG.as_bytes(), v + i).unwrap();
                        assert!(text(&d).contains(&format!("version=\"{}\"", v + i)));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
}

/// The common cases of [`presence`] without building a libxml2 document:
/// a plain PIDF (checked by [`scan_pidf`]) whose first `tuple` either has
/// an id (the body goes out unchanged) or gets one inserted into its start
/// tag (the only bytes that change), and whose first `person`, if any, has
/// an id. Anything else returns `None` and takes the libxml2 path, which
/// also produces the errors. Parsing a document with libxml2 and
/// serialising it again was most of the cost of a PUBLISH.
fn presence_fast(body: &[u8], stored: Option<&[u8]>) -> Option<Processed<'static>> {
    // Printable ASCII only in a stored id (it is copied into the body).
    if stored.is_some_and(|s| !s.iter().all(|c| (0x20..0x7f).contains(c))) {
        return None;
    }
    let Pidf {
        tuple_at,
        tuple_name_len,
        tuple_id,
    } = scan_pidf_memo(body)?;
    match tuple_id {
        // An empty id stays as it is on the libxml2 path (inserting one
        // here would make a second attribute).
        Some([]) => None,
        Some(id) => {
            if stored.is_none() && id.len() > MAX_TUPLE_ID_LEN {
                return None;
            }
            Some(Processed {
                body: Cow::Owned(body.to_vec()),
                tuple_id: Some(stored.unwrap_or(id).to_vec()),
            })
        }
        None => {
            let new_id = stored.map_or_else(|| generate_tuple_id().into_bytes(), <[u8]>::to_vec);
            let insert_at = tuple_at + 1 + tuple_name_len;
            let mut out = Vec::with_capacity(body.len() + new_id.len() + 8);
            out.extend_from_slice(&body[..insert_at]);
            out.extend_from_slice(b" id=\"");
            for &c in &new_id {
                match c {
                    b'"' => out.extend_from_slice(b"&quot;"),
                    b'&' => out.extend_from_slice(b"&amp;"),
                    b'<' => out.extend_from_slice(b"&lt;"),
                    c => out.push(c),
                }
            }
            out.push(b'"');
            out.extend_from_slice(&body[insert_at..]);
            Some(Processed {
                body: Cow::Owned(out),
                tuple_id: Some(new_id),
            })
        }
    }
}

/// What [`scan_pidf`] found: the first `tuple` element's `<` offset, the
/// length of its (qualified) name, and its `id` attribute's value.
#[derive(Debug, PartialEq, Eq)]
struct Pidf<'a> {
    tuple_at: usize,
    tuple_name_len: usize,
    tuple_id: Option<&'a [u8]>,
}

/// A hand-written check of a deliberately small subset of XML 1.0, in one
/// pass without allocating: printable ASCII plus TAB/LF/CR; an optional
/// `<?xml version="1.0"?>` declaration (encoding UTF-8 at most); one root
/// element, nested at most 32 deep, end tags matching start tags; names of
/// ASCII letters, digits, `_ . -` with at most one inner colon; attributes
/// separated by whitespace, quoted, unique (at most 8 per element), values
/// without `<`, `&` or line breaks; text without `&` or `]]>`; only
/// whitespace around the root. No comments, processing instructions, CDATA
/// or DTD. Every document of that subset is well-formed for libxml2 too (a
/// unit test checks the two agree on mutated bodies); anything outside it
/// returns `None`, and the caller takes libxml2. It also finds the first
/// element named `tuple` and checks that the first named `person` (any
/// prefix, any case, as the libxml2 path looks them up) has an id.
#[cfg(test)]
fn scan_pidf(b: &[u8]) -> Option<Pidf<'_>> {
    scan_pidf_spans(b, &mut Vec::new())
}

/// The last body [`scan_pidf`] took in this process, what it found, and
/// where its free attribute values are.
#[derive(Default)]
struct ScanMemo {
    valid: bool,
    body: Vec<u8>,
    tuple_at: usize,
    tuple_name_len: usize,
    /// The tuple id's value as a range of `body`.
    tuple_id: Option<(usize, usize)>,
    /// The free attribute values ([`scan_pidf_spans`]), in document order.
    spans: Vec<(u32, u32)>,
    /// Another list's capacity, for the next scan.
    spare: Vec<(u32, u32)>,
}

/// [`scan_pidf`] through this process's [`ScanMemo`]: a body that differs
/// from the last one taken only inside one free attribute value (the
/// `entity` of pua_usrloc's PIDF, from one user to the next), by bytes
/// that may stand in any such value, is well-formed exactly when that one
/// was, with its tuple at the same place (shifted by the length
/// difference when after it). Two byte comparisons instead of the scan:
/// the scan's branches on every byte ran with cold branch predictors, a
/// PUBLISH apart.
fn scan_pidf_memo(b: &[u8]) -> Option<Pidf<'_>> {
    static MEMO: crate::scratch::Slot<ScanMemo> = crate::scratch::Slot::new();
    crate::scratch::try_with_slot(&MEMO, |m| m.scan(b).0)
        .unwrap_or_else(|| scan_pidf_spans(b, &mut Vec::new()))
}

impl ScanMemo {
    /// [`scan_pidf`] of `b` through the memo (which then holds `b` if the
    /// scan took it); whether the memo answered.
    fn scan<'a>(&mut self, b: &'a [u8]) -> (Option<Pidf<'a>>, bool) {
        if self.valid {
            if let Some(p) = self.reuse(b) {
                return (Some(p), true);
            }
        }
        // Into the spare list: a body the scan refuses leaves the memo as
        // it was.
        let mut spans = std::mem::take(&mut self.spare);
        spans.clear();
        let Some(p) = scan_pidf_spans(b, &mut spans) else {
            self.spare = spans;
            return (None, false);
        };
        self.valid = false;
        self.spare = std::mem::replace(&mut self.spans, spans);
        self.body.clear();
        self.body.extend_from_slice(b);
        self.tuple_at = p.tuple_at;
        self.tuple_name_len = p.tuple_name_len;
        self.tuple_id = p.tuple_id.map(|v| {
            let at = v.as_ptr() as usize - b.as_ptr() as usize;
            (at, at + v.len())
        });
        self.valid = true;
        (Some(p), false)
    }

    fn reuse<'a>(&self, b: &'a [u8]) -> Option<Pidf<'a>> {
        let l = &self.body;
        let p = crate::bytes::common_prefix(l, b);
        let s = crate::bytes::common_suffix(&l[p..], &b[p..]);
        // The windows that differ: [p, l_end) in the memo, [p, b_end) in b.
        let (l_end, b_end) = (l.len() - s, b.len() - s);
        if p != l.len() || p != b.len() {
            // Inside one free value: the last one starting at or before p.
            let k = self.spans.partition_point(|&(vs, _)| vs as usize <= p);
            let (_, ve) = *self.spans.get(k.checked_sub(1)?)?;
            if l_end > ve as usize {
                return None;
            }
            let value_byte = |c: &u8| (0x20..0x7f).contains(c) && !b"\"'<&".contains(c);
            if !b[p..b_end].iter().all(value_byte) {
                return None;
            }
        }
        // Positions outside the window keep their bytes; after it they move.
        let at = |i: usize| if i >= l_end { i + b_end - l_end } else { i };
        Some(Pidf {
            tuple_at: at(self.tuple_at),
            tuple_name_len: self.tuple_name_len,
            tuple_id: self.tuple_id.map(|(vs, ve)| &b[at(vs)..at(ve)]),
        })
    }
}

/// The scan of [`scan_pidf`]; `spans` gets the free attribute values, as
/// ranges of `b` (the bytes between the quotes): those of every attribute
/// but `id` and namespace declarations, whose content the scan does not
/// look at (a [`ScanMemo`] relies on that).
fn scan_pidf_spans<'a>(b: &'a [u8], spans: &mut Vec<(u32, u32)>) -> Option<Pidf<'a>> {
    const MAX_DEPTH: usize = 32;
    let plain = |c: u8| (0x20..0x7f).contains(&c) || matches!(c, b'\t' | b'\n' | b'\r');
    // No early exit: the compiler can vectorise this.
    if !b.iter().fold(true, |ok, &c| ok & plain(c)) {
        return None;
    }
    let skip_ws = |i: &mut usize| skip_xml_ws(b, i);
    // A name at `i`: its end, or None when there is none or it is unusual.
    let name_end = |i: usize| -> Option<usize> {
        let first = *b.get(i)?;
        if !(first.is_ascii_alphabetic() || first == b'_') {
            return None;
        }
        let mut j = i + 1;
        let mut colons = 0;
        while let Some(&c) = b.get(j) {
            match c {
                b':' => colons += 1,
                c if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-') => {}
                _ => break,
            }
            j += 1;
        }
        (colons == 0 || (colons == 1 && b[j - 1] != b':')).then_some(j)
    };
    let is_tuple = |n: &[u8]| -> bool {
        let l = n.rsplit(|&c| c == b':').next().unwrap_or(n);
        l.eq_ignore_ascii_case(b"tuple")
    };
    let is_person = |n: &[u8]| {
        let l = n.rsplit(|&c| c == b':').next().unwrap_or(n);
        l.eq_ignore_ascii_case(b"person")
    };

    let mut i = 0;
    if b.starts_with(b"<?xml") {
        i = xml_declaration_end(b)?;
    }
    skip_ws(&mut i);
    // Namespace prefixes declared (`xmlns:p`) by the open elements: the
    // prefix's range in `b` and the depth of the element that declared it.
    // libxml2 matches an element with an undeclared prefix by its whole
    // name, so such a document takes the libxml2 path.
    let mut prefixes = [(0usize, 0usize, 0usize); 16];
    let mut nprefixes = 0;
    let mut stack = [(0usize, 0usize); MAX_DEPTH];
    let mut depth: usize = 0;
    let mut pidf: Option<Pidf<'_>> = None;
    let mut person_seen = false;
    let mut root_done = false;
    while !root_done {
        // At a `<` (the loop's invariant; text is consumed below).
        if b.get(i) != Some(&b'<') {
            return None;
        }
        match *b.get(i + 1)? {
            b'/' => {
                let n = i + 2;
                let e = name_end(n)?;
                let (os, oe) = stack[depth.checked_sub(1)?];
                if b[n..e] != b[os..oe] {
                    return None;
                }
                i = e;
                skip_ws(&mut i);
                if b.get(i) != Some(&b'>') {
                    return None;
                }
                i += 1;
                depth -= 1;
                while nprefixes > 0 && prefixes[nprefixes - 1].2 > depth {
                    nprefixes -= 1;
                }
                root_done = depth == 0;
            }
            b'!' | b'?' => return None,
            _ => {
                let at = i;
                let n = i + 1;
                let e = name_end(n)?;
                let name = &b[n..e];
                let tuple_here = pidf.is_none() && is_tuple(name);
                let person_here = !person_seen && is_person(name);
                i = e;
                let mut keys: [&[u8]; 8] = [&[]; 8];
                let mut nkeys = 0;
                let mut id: Option<&[u8]> = None;
                let empty = loop {
                    let ws = skip_ws(&mut i);
                    match *b.get(i)? {
                        b'>' => {
                            i += 1;
                            break false;
                        }
                        b'/' => {
                            if b.get(i + 1) != Some(&b'>') {
                                return None;
                            }
                            i += 2;
                            break true;
                        }
                        _ if !ws => return None,
                        _ => {}
                    }
                    let ke = name_end(i)?;
                    let key = &b[i..ke];
                    if nkeys == keys.len() || keys[..nkeys].contains(&key) {
                        return None; // many attributes or a duplicate: libxml2 decides
                    }
                    keys[nkeys] = key;
                    nkeys += 1;
                    let prefixed = key.contains(&b':');
                    i = ke;
                    skip_ws(&mut i);
                    if b.get(i) != Some(&b'=') {
                        return None;
                    }
                    i += 1;
                    skip_ws(&mut i);
                    let quote = *b.get(i)?;
                    if !matches!(quote, b'"' | b'\'') {
                        return None;
                    }
                    // Values and texts are short: plain loops beat memchr's
                    // set-up here.
                    let vs = i + 1;
                    let mut ve = vs;
                    loop {
                        match *b.get(ve)? {
                            c if c == quote => break,
                            b'<' | b'&' | b'\n' | b'\r' | b'\t' => return None,
                            _ => ve += 1,
                        }
                    }
                    let value = &b[vs..ve];
                    if let Some(p) = key.strip_prefix(b"xmlns:") {
                        if value.is_empty() || nprefixes == prefixes.len() {
                            return None;
                        }
                        prefixes[nprefixes] = (ke - p.len(), ke, depth + 1);
                        nprefixes += 1;
                    } else if prefixed && (tuple_here || person_here) {
                        return None; // `p:id`: libxml2 may see it as `id`
                    }
                    if key.eq_ignore_ascii_case(b"id") {
                        if id.is_none() {
                            id = Some(value);
                        }
                    } else if key != b"xmlns" && !key.starts_with(b"xmlns:") {
                        spans.push((u32::try_from(vs).ok()?, u32::try_from(ve).ok()?));
                    }
                    i = ve + 1;
                };
                if let Some(c) = name.iter().position(|&c| c == b':') {
                    let prefix = &name[..c];
                    let declared = prefixes[..nprefixes]
                        .iter()
                        .any(|&(ps, pe, _)| &b[ps..pe] == prefix);
                    if !declared || prefix == b"xml" || prefix == b"xmlns" {
                        return None;
                    }
                }
                if tuple_here {
                    pidf = Some(Pidf {
                        tuple_at: at,
                        tuple_name_len: e - n,
                        tuple_id: id,
                    });
                } else if person_here {
                    person_seen = true;
                    if id.is_none_or(|v| v.is_empty()) {
                        return None; // C gives it the tuple's id: the libxml2 path does that
                    }
                }
                if empty {
                    while nprefixes > 0 && prefixes[nprefixes - 1].2 > depth {
                        nprefixes -= 1;
                    }
                    root_done = depth == 0;
                } else {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    stack[depth] = (n, e);
                    depth += 1;
                }
            }
        }
        if !root_done {
            // Text up to the next tag: no references, no `]]>`.
            let from = i;
            loop {
                match *b.get(i)? {
                    b'<' => break,
                    b'&' => return None,
                    b'>' if i >= from + 2 && &b[i - 2..i] == b"]]" => return None,
                    _ => i += 1,
                }
            }
        }
    }
    skip_ws(&mut i);
    (i == b.len()).then_some(())?;
    pidf
}

/// The end of an XML declaration at the start of `b` of the forms
/// `<?xml version="1.0"?>` and `<?xml version="1.0" encoding="UTF-8"?>`
/// (either quote, any case of UTF-8, whitespace as XML allows it); `None`
/// for anything else.
fn xml_declaration_end(b: &[u8]) -> Option<usize> {
    let mut i = b"<?xml".len();
    let pseudo_attr = |i: &mut usize, name: &[u8]| -> Option<&[u8]> {
        if !skip_xml_ws(b, i) || !b.get(*i..)?.starts_with(name) {
            return None;
        }
        *i += name.len();
        skip_xml_ws(b, i);
        if b.get(*i) != Some(&b'=') {
            return None;
        }
        *i += 1;
        skip_xml_ws(b, i);
        let q = *b.get(*i)?;
        if !matches!(q, b'"' | b'\'') {
            return None;
        }
        let vs = *i + 1;
        let ve = vs + memchr::memchr(q, b.get(vs..)?)?;
        *i = ve + 1;
        Some(&b[vs..ve])
    };
    if pseudo_attr(&mut i, b"version")? != b"1.0" {
        return None;
    }
    let mut j = i;
    if let Some(enc) = pseudo_attr(&mut j, b"encoding") {
        if !enc.eq_ignore_ascii_case(b"UTF-8") {
            return None;
        }
        i = j;
    }
    skip_xml_ws(b, &mut i);
    b.get(i..)?.starts_with(b"?>").then_some(i + 2)
}

/// Moves `i` past XML white space in `b`; whether there was any.
fn skip_xml_ws(b: &[u8], i: &mut usize) -> bool {
    let from = *i;
    while b
        .get(*i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        *i += 1;
    }
    *i > from
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    #[test]
    fn duplicate_attributes_are_not_well_formed() {
        for dup in [
            USRLOC.replace("<tuple>", "<tuple id=\"a\" id=\"b\">"),
            USRLOC.replace("<status>", "<status x=\"1\" y=\"2\" x=\"3\">"),
        ] {
            assert!(presence_fast(dup.as_bytes(), None).is_none(), "{dup}");
            assert!(
                presence(dup.as_bytes(), None).is_err(),
                "libxml2 refuses it: {dup}"
            );
        }
        // Many distinct attributes: the libxml2 path, same result.
        let many = USRLOC.replace(
            "<status>",
            "<status a=\"1\" b=\"1\" c=\"1\" d=\"1\" e=\"1\" f=\"1\" g=\"1\" h=\"1\" i=\"1\">",
        );
        assert!(presence_fast(many.as_bytes(), Some(b"t")).is_none());
        assert!(presence(many.as_bytes(), Some(b"t")).is_ok());
    }

    #[test]
    fn hex_as_format() {
        for v in [
            0u64,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            0xdead_beef,
            u64::MAX,
            1 << 63,
        ] {
            let mut s = String::new();
            push_hex(&mut s, v);
            assert_eq!(s, format!("{v:x}"));
        }
        let id = generate_tuple_id();
        assert!(
            id.starts_with(&format!("pua{:x}-", std::process::id())),
            "{id}"
        );
        assert_eq!(id.split('-').count(), 3);
    }

    const USRLOC: &str = "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" entity=\"sip:alice@example.com\">\n  <tuple>\n    <status>\n      <basic>open</basic>\n    </status>\n  </tuple>\n</presence>\n";

    /// The tuple id libxml2 sees in a body.
    fn tuple_id_of(body: &[u8]) -> Option<Vec<u8>> {
        let doc = XmlDoc::parse(body).ok()?;
        let t = doc.find(c"tuple")?;
        attr(t, c"id")
    }

    #[test]
    fn fast_path_inserts_the_id_and_keeps_the_rest() {
        let p = presence_fast(USRLOC.as_bytes(), Some(b"t-1")).expect("fast path");
        assert_eq!(p.tuple_id.as_deref(), Some(&b"t-1"[..]));
        assert_eq!(
            tuple_id_of(&p.body).as_deref(),
            Some(&b"t-1"[..]),
            "libxml2 reads the inserted id"
        );
        let s = String::from_utf8(p.body.to_vec()).unwrap();
        assert_eq!(s, USRLOC.replace("<tuple>", "<tuple id=\"t-1\">"));
        // Without a stored id one is generated, and the same result as the libxml2 path otherwise.
        let p = presence_fast(USRLOC.as_bytes(), None).unwrap();
        let gen = p.tuple_id.clone().unwrap();
        assert_eq!(tuple_id_of(&p.body), Some(gen));
        // Ids that need escaping stay intact.
        let p = presence_fast(USRLOC.as_bytes(), Some(b"a\"b&c")).unwrap();
        assert_eq!(tuple_id_of(&p.body).as_deref(), Some(&b"a\"b&c"[..]));
    }

    #[test]
    fn fast_path_keeps_an_existing_id() {
        let body = USRLOC.replace("<tuple>", "<tuple id=\"mine\">");
        let p = presence_fast(body.as_bytes(), None).unwrap();
        assert_eq!(
            (p.body.as_ref(), p.tuple_id.as_deref()),
            (body.as_bytes(), Some(&b"mine"[..]))
        );
        let p = presence_fast(body.as_bytes(), Some(b"stored")).unwrap();
        assert_eq!(p.tuple_id.as_deref(), Some(&b"stored"[..]));
        // Same answers as the libxml2 path.
        let slow = {
            let doc = XmlDoc::parse(body.as_bytes()).unwrap();
            attr(doc.find(c"tuple").unwrap(), c"id")
        };
        assert_eq!(slow.as_deref(), Some(&b"mine"[..]));
    }

    #[test]
    fn unusual_documents_take_the_libxml_path() {
        let cases = [
            "<presence><tuple><status></presence>",  // mismatched end
            "<presence><tuple/></presence><extra/>", // two roots
            "<!DOCTYPE p [<!ENTITY x \"y\">]><presence><tuple/></presence>", // DTD
            "<presence><person/><tuple/></presence>", // person without id
            "<presence><tuple id=\"a&amp;b\"/></presence>", // entity in the id
            "<presence><status/></presence>",        // no tuple
            "<presence><tuple>",                     // truncated
            "not xml at all",
            "<presence><tuple id=\"\"/></presence>", // empty id: kept, not doubled
            "<p:presence><p:tuple/></p:presence>",   // undeclared prefix
            "<presence><tuple p:id=\"x\" xmlns:p=\"urn:p\"/></presence>", // prefixed id
        ];
        for c in cases {
            assert!(presence_fast(c.as_bytes(), None).is_none(), "{c}");
        }
        // ...where they get libxml2's answers.
        assert!(presence(b"<presence><tuple>", None).is_err());
        assert!(presence(b"<presence><status/></presence>", None).is_err());
        let p = presence(b"<presence><person/><tuple/></presence>", Some(b"t")).unwrap();
        assert_eq!(p.tuple_id.as_deref(), Some(&b"t"[..]));
    }

    /// One to three random edits of `m` (replace, insert or remove a byte
    /// from `alphabet`).
    fn mutate(m: &mut Vec<u8>, alphabet: &[u8], rnd: &mut impl FnMut(usize) -> usize) {
        for _ in 0..1 + rnd(3) {
            let i = rnd(m.len());
            let c = alphabet[rnd(alphabet.len())];
            match rnd(3) {
                0 => m[i] = c,
                1 => m.insert(i, c),
                _ => {
                    m.remove(i);
                }
            }
        }
    }

    /// Real bodies for the randomised tests to mutate.
    fn seed_bodies() -> Vec<String> {
        vec![
            USRLOC.to_string(),
            USRLOC.replace("<tuple>", "<tuple id=\"t0\">"),
            tests::PIDF.to_string(),
            tests::PIDF_NO_ID.to_string(),
            "<?xml version='1.0' encoding='utf-8' ?><p:presence xmlns:p=\"urn:ietf:params:xml:ns:pidf\" entity='a'><p:tuple id='x'><p:status><p:basic>open</p:basic></p:status></p:tuple><dm:person xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" id=\"p\"/></p:presence>".to_string(),
        ]
    }

    /// Whenever the hand scanner takes a body, libxml2 takes it too and
    /// finds the same tuple id; checked on mutations of real bodies with
    /// the bytes XML syntax is made of.
    #[test]
    fn fast_path_agrees_with_libxml2() {
        let seeds = seed_bodies();
        // 100,000 per seed body and other seeds were run while writing it.
        const ROUNDS: usize = 4000;
        let alphabet = b"<>/=\"' :&!?-_.;]x1\n\tab";
        let mut rnd = crate::testing::rnd_below(0x2545_f491_4f6c_dd1d);
        let (mut taken, mut refused) = (0, 0);
        for src in &seeds {
            for _ in 0..ROUNDS {
                let mut m = src.as_bytes().to_vec();
                mutate(&mut m, alphabet, &mut rnd);
                let stored = [None, Some(&b"s1"[..])][rnd(2)];
                let Some(fast) = presence_fast(&m, stored) else {
                    refused += 1;
                    continue;
                };
                taken += 1;
                let text = String::from_utf8_lossy(&m);
                let slow = presence_libxml(&m, stored).unwrap_or_else(|e| {
                    panic!("libxml2 refuses what the scanner took ({e:?}): {text}")
                });
                let had = tuple_id_of(&m);
                if stored.is_some() || had.is_some() {
                    assert_eq!(fast.tuple_id, slow.tuple_id, "{text}");
                } else {
                    assert!(fast.tuple_id.is_some() && slow.tuple_id.is_some(), "{text}");
                }
                // The body sent carries the body's own id, else the one recorded.
                assert_eq!(tuple_id_of(&fast.body), had.or(fast.tuple_id), "{text}");
            }
        }
        // Both sides of the check were exercised.
        assert!(
            taken > 1000 && refused > 1000,
            "taken {taken}, refused {refused}"
        );
    }

    /// The memo gives the scan's answer for every body: users' PIDFs that
    /// differ in their entity (the memo's case) by all kinds of bytes, and
    /// random edits anywhere (mostly not its case), one after the other.
    #[test]
    fn the_scan_memo_answers_as_the_scan() {
        let mut seeds = seed_bodies();
        seeds.push(USRLOC.replace("<status>", "<status a='x\"y' b=\"\">"));
        seeds.push(
            USRLOC
                .replace("entity=\"", "entity='")
                .replace("com\">", "com'>"),
        );
        let alphabet = b"<>/=\"' :&!?-_.;]x1\n\tab@\x7f";
        let mut rnd = crate::testing::rnd_below(0x9e37_79b9_7f4a_7c15);
        let (mut hits, mut taken) = (0, 0);
        let mut memo = ScanMemo::default();
        for n in 0..20_000 {
            // Runs of bodies from one seed, as from one consumer.
            let src = &seeds[n / 16 % seeds.len()];
            let mut m = src.as_bytes().to_vec();
            match rnd(3) {
                // Another user: a new entity value, of any bytes or of
                // those a value may hold.
                k @ (0 | 1) => {
                    let chars: &[u8] = if k == 0 { alphabet } else { b"az09@.:;-_ " };
                    let v: Vec<u8> = (0..rnd(40)).map(|_| chars[rnd(chars.len())]).collect();
                    if let Some(at) = src.find("entity=").map(|i| i + 8) {
                        let end = at + src[at..].find(['"', '\'']).unwrap_or(0);
                        m.splice(at..end, v);
                    }
                }
                _ => mutate(&mut m, alphabet, &mut rnd),
            }
            let want = scan_pidf(&m);
            taken += usize::from(want.is_some());
            let (got, hit) = memo.scan(&m);
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&m));
            hits += usize::from(hit);
            assert_eq!(scan_pidf_memo(&m), want, "through the process's memo");
        }
        assert!(
            hits > 1500 && taken > 6000,
            "memo hits {hits}, taken {taken}"
        );
    }

    #[test]
    fn prefixed_tuples_and_self_closing_tags() {
        let body = b"<p:presence xmlns:p=\"urn:ietf:params:xml:ns:pidf\"><p:tuple/></p:presence>";
        let p = presence_fast(body, Some(b"z")).unwrap();
        assert_eq!(p.body.as_ref(), &b"<p:presence xmlns:p=\"urn:ietf:params:xml:ns:pidf\"><p:tuple id=\"z\"/></p:presence>"[..]);
        assert_eq!(tuple_id_of(&p.body).as_deref(), Some(&b"z"[..]));
    }
}
