//! Dispatch from an event's processor kind to pua_core's body processing.
use pua_core::events::Processor;

/// (new body, tuple id to store when the record had none).
pub type Processed = (Vec<u8>, Option<Vec<u8>>);

pub fn process(
    p: Processor,
    body: &[u8],
    ver: i32,
    stored_tuple: Option<&[u8]>,
) -> Result<Processed, String> {
    pua_core::bodies::process(p, body, ver.max(0) as u32, stored_tuple)
        .map(|o| (o.body.into_owned(), o.tuple_id))
        .map_err(|e| e.to_string())
}
