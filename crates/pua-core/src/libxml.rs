//! The helpers `bind_libxml_api` hands to rls and pua_xmpp: searches over
//! libxml2 documents the caller parsed. Names compare case-insensitively, a
//! namespace is matched by prefix, the search is depth-first in document
//! order; *Content* results come from libxml2 (`xmlNodeGetContent`), so the
//! caller frees them with `xmlFree`, as with the C module.

use crate::sys::{xmlAttr, xmlDoc, xmlNode, xmlNodeGetContent, xmlStrcasecmp};
use std::os::raw::c_char;
use std::ptr;

/// Case-insensitive comparison of a libxml name with a C string.
///
/// # Safety
/// Both must be null or NUL-terminated.
unsafe fn name_is(a: *const u8, b: *const c_char) -> bool {
    !a.is_null() && !b.is_null() && xmlStrcasecmp(a, b as *const u8) == 0
}

/// `xmlNodeGetNodeByName`: the first node named `name` (in namespace prefix
/// `ns` when given) among `node`, its descendants and its following siblings.
///
/// # Safety
/// `node` null or a valid libxml2 node; `name` NUL-terminated; `ns` null or NUL-terminated.
pub unsafe fn node_by_name(
    node: *mut xmlNode,
    name: *const c_char,
    ns: *const c_char,
) -> *mut xmlNode {
    // Iterative depth-first walk (no recursion: hostile documents can be deep).
    let mut stack: Vec<*mut xmlNode> = Vec::new();
    let mut cur = node;
    loop {
        while !cur.is_null() {
            let n = &*cur;
            if name_is(n.name, name)
                && (ns.is_null() || (!n.ns.is_null() && name_is((*n.ns).prefix, ns)))
            {
                return cur;
            }
            // Visit children first, then come back to the sibling.
            stack.push(n.next);
            cur = n.children;
        }
        match stack.pop() {
            Some(next) => cur = next,
            None => return ptr::null_mut(),
        }
    }
}

/// `xmlDocGetNodeByName`: [`node_by_name`] from the document's first child.
///
/// # Safety
/// `doc` null or a valid document; strings as for [`node_by_name`].
pub unsafe fn doc_node_by_name(
    doc: *mut xmlDoc,
    name: *const c_char,
    ns: *const c_char,
) -> *mut xmlNode {
    if doc.is_null() {
        return ptr::null_mut();
    }
    node_by_name((*doc).children, name, ns)
}

/// `xmlNodeGetNodeContentByName`: the content of the first matching node's
/// children (its text), allocated by libxml2; null when not found.
///
/// # Safety
/// As [`node_by_name`].
pub unsafe fn node_content_by_name(
    root: *mut xmlNode,
    name: *const c_char,
    ns: *const c_char,
) -> *mut c_char {
    let n = node_by_name(root, name, ns);
    if n.is_null() {
        return ptr::null_mut();
    }
    xmlNodeGetContent((*n).children) as *mut c_char
}

/// `xmlNodeGetAttrContentByName`: the value of attribute `name` (case-
/// insensitive) of `node`, allocated by libxml2; null when absent.
///
/// # Safety
/// `node` null or a valid element; `name` NUL-terminated.
pub unsafe fn attr_content_by_name(node: *mut xmlNode, name: *const c_char) -> *mut c_char {
    if node.is_null() {
        return ptr::null_mut();
    }
    let mut a: *mut xmlAttr = (*node).properties;
    while !a.is_null() {
        if name_is((*a).name, name) {
            return xmlNodeGetContent((*a).children) as *mut c_char;
        }
        a = (*a).next;
    }
    ptr::null_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{xmlFreeDoc, xmlParseMemory};
    use std::ffi::CStr;

    const PIDF: &str = r#"<?xml version="1.0"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:alice@example.com">
  <tuple id="t1"><status><basic>open</basic></status></tuple>
  <dm:person ID="p1"><dm:note>away</dm:note></dm:person>
</presence>"#;

    fn take(p: *mut c_char) -> Option<String> {
        if p.is_null() {
            return None;
        }
        // SAFETY: libxml2 returned a NUL-terminated string we own.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        // SAFETY: allocated by libxml2's allocator.
        unsafe { libc::free(p as *mut libc::c_void) };
        Some(s)
    }

    #[test]
    fn finds_nodes_attributes_and_content() {
        // SAFETY: parsing a well-formed literal; freed at the end.
        unsafe {
            let doc = xmlParseMemory(PIDF.as_ptr() as *const c_char, PIDF.len() as i32);
            assert!(!doc.is_null());
            let tuple = doc_node_by_name(doc, c"TUPLE".as_ptr(), ptr::null());
            assert!(!tuple.is_null(), "case-insensitive name match");
            assert_eq!(
                take(attr_content_by_name(tuple, c"id".as_ptr())).as_deref(),
                Some("t1")
            );
            assert_eq!(take(attr_content_by_name(tuple, c"nope".as_ptr())), None);
            let root = (*doc).children;
            assert_eq!(
                take(node_content_by_name(root, c"basic".as_ptr(), ptr::null())).as_deref(),
                Some("open")
            );
            // Namespace by prefix: the note is in dm:, the basic has no prefix.
            assert_eq!(
                take(node_content_by_name(root, c"note".as_ptr(), c"dm".as_ptr())).as_deref(),
                Some("away")
            );
            assert!(node_by_name(root, c"basic".as_ptr(), c"dm".as_ptr()).is_null());
            let person = doc_node_by_name(doc, c"person".as_ptr(), ptr::null());
            assert_eq!(
                take(attr_content_by_name(person, c"id".as_ptr())).as_deref(),
                Some("p1")
            );
            assert!(doc_node_by_name(ptr::null_mut(), c"x".as_ptr(), ptr::null()).is_null());
            assert!(attr_content_by_name(ptr::null_mut(), c"x".as_ptr()).is_null());
            xmlFreeDoc(doc);
        }
    }
}
