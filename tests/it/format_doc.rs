//! `docs/on-disk-format.md` against the code: the byte tables must list exactly the `field`
//! ranges of `mmp_core::format::{native, ext4}` (same order, offsets, sizes, names), the ext4
//! table must agree with `spec/ext4-mmp.md` §1 when the shared spec is present, and the
//! worked example must be what `Record::emit` writes.

use mmp_core::format::{ext4, native};
use std::ops::Range;
use std::path::PathBuf;

/// The native record fields in order, with the name the table uses.
const NATIVE_FIELDS: [(&str, Range<usize>); 18] = [
    ("magic", native::field::MAGIC),
    ("version", native::field::VERSION),
    ("record_len", native::field::RECORD_LEN),
    ("state", native::field::STATE),
    ("reason", native::field::REASON),
    ("fail_intervals", native::field::FAIL_INTERVALS),
    ("interval_ms", native::field::INTERVAL_MS),
    ("delay_us", native::field::DELAY_US),
    ("seq", native::field::SEQ),
    ("time_ms", native::field::TIME_MS),
    ("hostid", native::field::HOSTID),
    ("flags", native::field::FLAGS),
    ("area_id", native::field::AREA_ID),
    ("nodename", native::field::NODENAME),
    ("devname", native::field::DEVNAME),
    ("since_ms", native::field::SINCE_MS),
    ("reserved", native::field::RESERVED),
    ("checksum", native::field::CHECKSUM),
];

/// The ext4 MMP block fields in order, with the `struct mmp_struct` name the table uses.
const EXT4_FIELDS: [(&str, Range<usize>); 9] = [
    ("mmp_magic", ext4::field::MAGIC),
    ("mmp_seq", ext4::field::SEQ),
    ("mmp_time", ext4::field::TIME),
    ("mmp_nodename", ext4::field::NODENAME),
    ("mmp_bdevname", ext4::field::BDEVNAME),
    ("mmp_check_interval", ext4::field::CHECK_INTERVAL),
    ("mmp_pad1", ext4::field::PAD1),
    ("mmp_pad2", ext4::field::PAD2),
    ("mmp_checksum", ext4::field::CHECKSUM),
];

/// One row of a `| offset | size | type | field | meaning |` table.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    offset: usize,
    size: usize,
    field: String,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn format_doc() -> String {
    read(&workspace_root().join("docs").join("on-disk-format.md"))
}

fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

fn parse_hex(cell: &str) -> usize {
    let digits = cell
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("offset {cell:?} is not 0x-hex"));
    usize::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("offset {cell:?}: {e}"))
}

/// The rows of the first Markdown table in `lines`: header `| offset | size | type | field |
/// ...`, separator, then rows until the first line that does not start with `|`. Rows with an
/// empty offset cell (a "total" line) are left out.
fn table_rows<'a>(mut lines: impl Iterator<Item = &'a str>) -> Vec<Row> {
    let header = lines
        .by_ref()
        .find(|l| l.trim_start().starts_with('|'))
        .expect("a table");
    let names = cells(header);
    assert_eq!(
        &names[..4],
        &["offset", "size", "type", "field"],
        "table header: {header}"
    );
    let separator = lines.next().expect("separator line");
    assert!(separator.contains("---"), "separator: {separator}");
    lines
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(cells)
        .filter(|c| !c[0].is_empty())
        .map(|c| Row {
            offset: parse_hex(c[0]),
            size: c[1]
                .parse()
                .unwrap_or_else(|e| panic!("size {:?}: {e}", c[1])),
            field: c[3].trim_matches('`').to_owned(),
        })
        .collect()
}

/// The table right after the marker line `<!-- table:NAME -->`.
fn doc_table(doc: &str, name: &str) -> Vec<Row> {
    let marker = format!("<!-- table:{name} -->");
    let mut lines = doc.lines();
    assert!(
        lines.by_ref().any(|l| l.trim() == marker),
        "marker {marker} not found"
    );
    table_rows(lines)
}

fn assert_table_matches(
    name: &str,
    rows: &[Row],
    fields: &[(&str, Range<usize>)],
    total_len: usize,
) {
    assert_eq!(
        rows.len(),
        fields.len(),
        "{name} table: {} rows for {} field consts",
        rows.len(),
        fields.len()
    );
    for (row, (field, range)) in rows.iter().zip(fields) {
        assert_eq!(row.field, *field, "{name} table: row {row:?}");
        assert_eq!(
            (row.offset, row.size),
            (range.start, range.len()),
            "{name} table: field {field} is {range:#x?} in the code"
        );
    }
    // The consts themselves tile the structure: contiguous, starting at 0, ending at its length.
    let mut next = 0;
    for (field, range) in fields {
        assert_eq!(range.start, next, "{name}: gap or overlap before {field}");
        next = range.end;
    }
    assert_eq!(
        next, total_len,
        "{name}: fields do not end at the structure length"
    );
}

#[test]
fn native_table_matches_field_ranges() {
    let rows = doc_table(&format_doc(), "native");
    assert_table_matches("native", &rows, &NATIVE_FIELDS, native::RECORD_LEN);
}

#[test]
fn ext4_table_matches_field_ranges() {
    let rows = doc_table(&format_doc(), "ext4");
    assert_table_matches("ext4", &rows, &EXT4_FIELDS, ext4::STRUCT_LEN);
}

#[test]
fn ext4_table_matches_spec() {
    let spec_path = workspace_root()
        .join("..")
        .join("shared")
        .join("spec")
        .join("ext4-mmp.md");
    if !spec_path.exists() {
        mmp_tests::skip_optional(&format!(
            "{} not found; ext4 table not compared with the spec",
            spec_path.display()
        ));
        return;
    }
    let spec = read(&spec_path);
    let mut lines = spec.lines();
    assert!(
        lines.by_ref().any(|l| l.starts_with("## 1.")),
        "no '## 1.' section in {}",
        spec_path.display()
    );
    let spec_rows = table_rows(lines);
    let doc_rows = doc_table(&format_doc(), "ext4");
    assert_eq!(
        doc_rows, spec_rows,
        "docs/on-disk-format.md ext4 table differs from spec §1"
    );
}

/// The record of the worked example in §1.8.
fn worked_example() -> native::Record {
    let area_id: [u8; 16] = core::array::from_fn(|i| 0x10 + u8::try_from(i).expect("small"));
    let mut r = native::Record::formatted(area_id, 1000, 10, 1_795_257_665_123);
    r.state = native::State::Active;
    r.reason = native::Reason::TakenOver;
    r.delay_us = 2500;
    r.seq = 0x0123_4567_89AB_CDEF;
    r.hostid = 0x00A8_C0FE;
    r.set_nodename(b"oss1");
    r.set_devname(b"/dev/mapper/ost0-mmp");
    r.since_ms = 1_795_257_600_000;
    r
}

/// The bytes of the fenced hex dump after `<!-- dump:native -->`: lines `OFF: hex bytes |ascii|`.
fn doc_dump(doc: &str) -> Vec<u8> {
    let mut lines = doc
        .lines()
        .skip_while(|l| l.trim() != "<!-- dump:native -->")
        .skip(1);
    assert_eq!(
        lines.next().map(str::trim),
        Some("```"),
        "dump must start with a fence"
    );
    let mut bytes = Vec::new();
    for line in lines.take_while(|l| l.trim() != "```") {
        let (off, rest) = line.split_once(':').expect("OFF: line");
        assert_eq!(
            parse_hex(&format!("0x{off}")),
            bytes.len(),
            "dump line {line}"
        );
        let hex = rest.split('|').next().expect("hex part");
        for b in hex.split_whitespace() {
            bytes
                .push(u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("{b:?} in {line}: {e}")));
        }
    }
    bytes
}

#[test]
fn native_worked_example_is_what_emit_writes() {
    let doc = format_doc();
    let dump = doc_dump(&doc);
    assert_eq!(dump.len(), native::RECORD_LEN);
    let record = worked_example();
    let mut emitted = [0xa5u8; native::RECORD_LEN];
    record.emit(&mut emitted);
    assert_eq!(
        dump, emitted,
        "the dump in docs/on-disk-format.md §1.8 is not what emit writes"
    );
    assert_eq!(native::Record::parse(&dump), Ok(record));
    let crc = mmp_core::crc32c::crc32c(&dump[..0x1FC]);
    assert_eq!(crc, 0x802D_F6A3);
    assert!(doc.contains("0x802DF6A3"), "the text names the checksum");
}
