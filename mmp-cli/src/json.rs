//! The one JSON schema of `status --json`, `check --json`, `list --json`, `pr --json` and the holder's
//! status file (`hold --status-file`, and the `.status` file of `mmp mount`): one object per
//! line, each opening with the same keys, so that one reader handles them all:
//!
//! * `schema`: this schema's version ([`SCHEMA`]); a reader refuses a larger one.
//! * `kind`: `status`, `check`, `holder`, `summary`, `mount` or `pr`.
//! * `device`: the device as given (`summary`: absent).
//! * `format`: `ext4`, `native`, or `unknown` when the device could not be read that far;
//!   always present for `status`, `check` and `holder` objects.
//!
//! An error is the same object with `error` (one line of text, as the command prints it
//! without `--json`). Numbers that can exceed 2^53 (`seq`) are strings, so that no reader
//! loses digits. docs/json.md describes every key.

use crate::out::json_str;
use mmp_linux::target::Format;
use std::fmt::{Display, Write as _};

/// The version of the schema. Adding keys keeps it; changing or removing one increments it.
pub(crate) const SCHEMA: u32 = 1;

/// One JSON object, built key by key.
pub(crate) struct Obj(String);

impl Obj {
    /// An object of `kind` with the keys every object has.
    pub(crate) fn new(kind: &str) -> Obj {
        Obj(format!("{{\"schema\":{SCHEMA},\"kind\":\"{kind}\""))
    }

    /// An object nested in another (no `schema` or `kind`): a value for [`Obj::raw`].
    pub(crate) fn nested() -> Obj {
        Obj("{".to_owned())
    }

    /// Before a key: a comma unless it is the first of the object.
    fn sep(&mut self) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
    }

    /// An object about one device: `schema`, `kind`, `device`, `format`.
    pub(crate) fn device(kind: &str, device: &str, format: Option<Format>) -> Obj {
        Obj::new(kind)
            .str("device", device)
            .str("format", format.map_or("unknown", Format::name))
    }

    /// A string value (escaped; without Rust's " (os error N)" after an errno's text).
    pub(crate) fn str(mut self, key: &str, value: &str) -> Obj {
        self.sep();
        let _ = write!(self.0, "\"{key}\":{}", json_str(&crate::out::plain(value)));
        self
    }

    /// A value written as it is: a number, `true`, `null`, or JSON already encoded.
    pub(crate) fn raw(mut self, key: &str, value: impl Display) -> Obj {
        self.sep();
        let _ = write!(self.0, "\"{key}\":{value}");
        self
    }

    /// The object's text.
    pub(crate) fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_open_with_the_common_keys() {
        let o = Obj::device("check", "/dev/x\"", None)
            .str("result", "error")
            .raw("n", 3)
            .end();
        assert_eq!(
            o,
            "{\"schema\":1,\"kind\":\"check\",\"device\":\"/dev/x\\\"\",\"format\":\"unknown\",\
             \"result\":\"error\",\"n\":3}"
        );
        let inner = Obj::nested().raw("a", 1).str("b", "x").end();
        assert_eq!(inner, "{\"a\":1,\"b\":\"x\"}");
        assert_eq!(Obj::nested().end(), "{}");
    }
}
