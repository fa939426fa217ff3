//! `mmp format`: write a native MMP area.

use crate::exit::Exit;
use crate::{out, show};
use std::path::Path;

pub(crate) fn format_native(
    interval_ms: u32,
    fail: u16,
    force: bool,
    device: &Path,
) -> Result<Exit, String> {
    use mmp_linux::area;
    let path = show(device);
    match area::format(device, interval_ms, u32::from(fail), force) {
        Ok(_) => {
            outln!(
                "{path}: native MMP area written: interval {interval_ms} ms, fail intervals {fail} \
                 (self-fence after {} ms; a takeover waits {} ms)",
                u64::from(interval_ms) * u64::from(fail),
                2 * u64::from(interval_ms) * u64::from(fail)
            );
            Ok(Exit::Ok)
        }
        Err(area::FormatError::NotClean(r)) => {
            note!(
                "mmp: {path}: holds a native MMP area that is {} ({}); refusing without --force",
                r.state.name(),
                out::who(&mmp_core::machine::Snapshot::Native(*r))
            );
            Ok(Exit::Refused)
        }
        Err(e) if e.is_refusal() => {
            note!("mmp: {path}: {e}");
            Ok(Exit::Refused)
        }
        Err(e @ (area::FormatError::BadInterval(_) | area::FormatError::BadFailIntervals(_))) => {
            Err(format!("--interval-ms/--fail-intervals: {e}"))
        }
        // Device errors already name the device.
        Err(area::FormatError::Device(e)) => Err(e.to_string()),
        Err(e) => Err(format!("{path}: {e}")),
    }
}
