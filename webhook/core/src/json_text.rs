//! JSON answers written as text by hand take their strings and small values from here,
//! escaped by serde_json.

use serde::Serialize;

/// Appends `value` as JSON: text, lists of text and plain structs, which cannot fail to
/// serialise into memory.
pub fn write(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    let _ = serde_json::to_writer(out, value);
}
