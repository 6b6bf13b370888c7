//! Which SSE events the usage reader (`crate::usage`) may pass over unscanned: the usual token
//! delta, one `data` line and its blank line, that cannot hold a usage object.

use memchr::{memchr, memchr2, memmem};
use std::sync::LazyLock;

/// `"usage"` as a key spells it without escapes.
const USAGE_KEY: &[u8] = b"\"usage\"";
/// Its searcher, built once (building one per event cost as much as the search).
static USAGE_KEY_FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(USAGE_KEY));

/// An SSE event [`plain_event`] found: one `data` line and its blank line, whole in the chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlainEvent {
    /// Bytes from the `d` of `data` to the end of the blank line.
    pub(crate) len: usize,
    /// The blank line ended in a CR (a following LF still belongs to it).
    pub(crate) after_cr: bool,
}

/// The usual event, `data: {...}` and a blank line, when it is whole in `rest` (which starts at a
/// line's start, no data read for the event yet) and its data cannot hold a usage object: no
/// backslash, and no `{` after its first `"usage"`.
///
/// Why the scanner would find nothing in it either: without escapes, a key that is `usage` is
/// those seven bytes `"usage"`, and a usage object's capture starts at a `{` after that key.
/// The event being one line ended by a blank line, its data is that line's value alone. vLLM's
/// and OpenAI's token deltas (`..."usage":null}`) are all such events: only the last one, with
/// the usage object, is scanned.
pub(crate) fn plain_event(rest: &[u8]) -> Option<PlainEvent> {
    const FIELD: &[u8] = b"data:";
    let value = rest.strip_prefix(FIELD)?;
    let eol = memchr2(b'\n', b'\r', value)?;
    let data = &value[..eol];
    // The line's end (CR LF is one), then the blank line's.
    let mut blank = FIELD.len() + eol + 1;
    if value[eol] == b'\r' && rest.get(blank) == Some(&b'\n') {
        blank += 1;
    }
    let end = *rest.get(blank)?;
    if end != b'\n' && end != b'\r' {
        return None;
    }
    if memchr(b'\\', data).is_some() {
        return None;
    }
    if let Some(at) = USAGE_KEY_FINDER.find(data) {
        if memchr(b'{', &data[at..]).is_some() {
            return None;
        }
    }
    Some(PlainEvent { len: blank + 1, after_cr: end == b'\r' })
}
