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

/// One value of an [`Obj`].
enum Val {
    /// Text (escaped when written as JSON).
    Str(String),
    /// JSON text as it is: a number, `true`, or an encoded array or object.
    Raw(String),
    /// `null` (an empty value in `--export` lines).
    Null,
}

/// One JSON object, built key by key; written as JSON ([`Obj::end`]) or as `KEY=VALUE`
/// lines for shell scripts ([`Obj::export`]).
pub(crate) struct Obj(Vec<(String, Val)>);

impl Obj {
    /// An object of `kind` with the keys every object has.
    pub(crate) fn new(kind: &str) -> Obj {
        Obj(vec![
            ("schema".to_owned(), Val::Raw(SCHEMA.to_string())),
            ("kind".to_owned(), Val::Str(kind.to_owned())),
        ])
    }

    /// An object nested in another (no `schema` or `kind`): a value for [`Obj::raw`].
    pub(crate) fn nested() -> Obj {
        Obj(Vec::new())
    }

    /// An object about one device: `schema`, `kind`, `device`, `format`.
    pub(crate) fn device(kind: &str, device: &str, format: Option<Format>) -> Obj {
        Obj::new(kind)
            .str("device", device)
            .str("format", format.map_or("unknown", Format::name))
    }

    /// A string value (without Rust's " (os error N)" after an errno's text).
    pub(crate) fn str(mut self, key: &str, value: &str) -> Obj {
        self.0
            .push((key.to_owned(), Val::Str(crate::out::plain(value))));
        self
    }

    /// A string value, or `null`.
    pub(crate) fn opt_str(self, key: &str, value: Option<&str>) -> Obj {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    /// `null`.
    pub(crate) fn null(mut self, key: &str) -> Obj {
        self.0.push((key.to_owned(), Val::Null));
        self
    }

    /// A value written as it is: a number, `true`, or JSON already encoded.
    pub(crate) fn raw(mut self, key: &str, value: impl Display) -> Obj {
        self.0.push((key.to_owned(), Val::Raw(value.to_string())));
        self
    }

    /// The object's JSON text (one line).
    pub(crate) fn end(self) -> String {
        let mut o = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{}:", json_str(k));
            match v {
                Val::Str(s) => o.push_str(&json_str(s)),
                Val::Raw(r) => o.push_str(r),
                Val::Null => o.push_str("null"),
            }
        }
        o.push('}');
        o
    }

    /// The object as `KEY=VALUE` lines (`mmp status --export`), one per key in the order
    /// of the JSON object: a string as its text (the same escaping as the JSON's, so one
    /// line, printable ASCII for text read from a device), `null` as nothing, anything
    /// else as its JSON text. A reader splits each line at its first `=`; the values are
    /// not quoted for a shell's `eval`.
    pub(crate) fn export(self) -> String {
        let mut o = String::new();
        for (k, v) in self.0 {
            let v = match v {
                Val::Str(s) => s.replace(['\n', '\r'], " "),
                Val::Raw(r) => r,
                Val::Null => String::new(),
            };
            let _ = writeln!(o, "{k}={v}");
        }
        o
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

    #[test]
    fn export_is_one_line_per_key() {
        let o = Obj::device("status", "/dev/x", None)
            .str("node", "a b\"c")
            .opt_str("mounted_at", None)
            .opt_str("m", Some("/srv"))
            .raw("n", 3)
            .str("error", "two\nlines")
            .export();
        assert_eq!(
            o,
            "schema=1\nkind=status\ndevice=/dev/x\nformat=unknown\nnode=a b\"c\nmounted_at=\n\
             m=/srv\nn=3\nerror=two lines\n"
        );
    }
}
