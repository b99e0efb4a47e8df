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
    let _ = (body, ver, stored_tuple);
    Err(format!("{p:?}: body processing is not available yet"))
}
