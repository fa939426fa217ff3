//! `UUID=` and `LABEL=` device names, as mount(8) and e2mmpstatus accept them.
//!
//! The udev links (`/dev/disk/by-uuid`, `/dev/disk/by-label`) are tried first, as blkid
//! does; a link is trusted unless the device it names visibly carries another UUID or label
//! (a stale link). Without a usable link, every block device in `/sys/class/block` is read:
//! an ext4 superblock names its UUID (`s_uuid`, byte 0x468) and label (`s_volume_name`,
//! byte 0x478); a native area names its UUID (`area_id`, byte 0x30) and has no label.
//! Devices that others are stacked on (the paths under a multipath or LVM device) are
//! skipped: the device on top is the one to use. No match, or several, is an error that
//! says which.

use crate::show;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a `UUID=`/`LABEL=` name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tag {
    /// Lowercase, with dashes, as blkid prints it.
    Uuid(String),
    Label(Vec<u8>),
}

impl Tag {
    fn parse(arg: &Path) -> Option<Tag> {
        let b = arg.as_os_str().as_encoded_bytes();
        let (kind, v) = if let Some(v) = b.strip_prefix(b"UUID=") {
            (true, v)
        } else {
            (false, b.strip_prefix(b"LABEL=")?)
        };
        // fstab style: UUID="..." (the shell usually removed the quotes already).
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        Some(if kind {
            Tag::Uuid(String::from_utf8_lossy(v).trim().to_ascii_lowercase())
        } else {
            Tag::Label(v.to_vec())
        })
    }

    fn shown(&self) -> String {
        match self {
            Tag::Uuid(u) => format!("UUID={u}"),
            Tag::Label(l) => format!("LABEL={}", crate::out::esc(l)),
        }
    }

    /// The udev link for this tag (udev escapes unusual bytes in labels; such a label is
    /// found by the scan instead).
    fn link(&self) -> Option<PathBuf> {
        match self {
            Tag::Uuid(u) if !u.is_empty() && !u.contains('/') => {
                Some(Path::new("/dev/disk/by-uuid").join(u))
            }
            Tag::Label(l)
                if !l.is_empty()
                    && l.iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b)) =>
            {
                Some(Path::new("/dev/disk/by-label").join(String::from_utf8_lossy(l).as_ref()))
            }
            _ => None,
        }
    }

    /// Whether what `ids` read from a device matches.
    fn matches(&self, ids: &Ids) -> bool {
        match self {
            Tag::Uuid(u) => ids.uuid.as_deref() == Some(u.as_str()),
            Tag::Label(l) => ids.label.as_deref() == Some(l.as_slice()),
        }
    }
}

/// The names a device carries, as far as mmp reads them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Ids {
    /// `None`: no ext4 superblock and no native area here (another file system, say).
    pub(crate) uuid: Option<String>,
    pub(crate) label: Option<Vec<u8>>,
}

/// The UUID and label in the first 2 KiB of a device: an ext4/ldiskfs superblock, or a
/// native area.
pub(crate) fn ids_of(head: &[u8]) -> Ids {
    const SB: usize = 1024;
    if head.len() >= 64 && head.starts_with(b"MMPNATIV") {
        return Ids {
            uuid: Some(uuid_text(&head[0x30..0x40])),
            label: Some(Vec::new()),
        };
    }
    if head.len() >= SB + 0x88 && head[SB + 0x38..SB + 0x3a] == [0x53, 0xef] {
        let name = &head[SB + 0x78..SB + 0x88];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        return Ids {
            uuid: Some(uuid_text(&head[SB + 0x68..SB + 0x78])),
            label: Some(name[..end].to_vec()),
        };
    }
    Ids::default()
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase.
pub(crate) fn uuid_text(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn read_head(p: &Path) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(p).ok()?;
    let mut b = vec![0u8; 2048];
    let mut n = 0;
    while n < b.len() {
        match f.read(&mut b[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    b.truncate(n);
    Some(b)
}

/// Every block device worth reading: not empty, not stacked under another device, not a
/// floppy (whose open can hang).
fn block_devices() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let sys = e.path();
            let size = std::fs::read_to_string(sys.join("size")).ok()?;
            if size.trim() == "0" || name.starts_with("fd") {
                return None;
            }
            let stacked =
                std::fs::read_dir(sys.join("holders")).is_ok_and(|mut h| h.next().is_some());
            (!stacked).then(|| Path::new("/dev").join(name))
        })
        .collect();
    v.sort();
    v
}

/// `arg` itself, or the device its `UUID=`/`LABEL=` names.
///
/// # Errors
/// No device, or several, carry the name.
pub(crate) fn device(arg: &Path) -> Result<PathBuf, String> {
    let Some(tag) = Tag::parse(arg) else {
        return Ok(arg.to_path_buf());
    };
    if matches!(&tag, Tag::Uuid(u) if u.is_empty()) || matches!(&tag, Tag::Label(l) if l.is_empty())
    {
        return Err(format!("{}: the name is empty", tag.shown()));
    }
    if let Some(link) = tag.link()
        && let Ok(dev) = std::fs::canonicalize(&link)
    {
        let ids = read_head(&dev).map(|h| ids_of(&h)).unwrap_or_default();
        // A file system mmp does not read (XFS for `mmp mount`): trust udev.
        if ids.uuid.is_none() || tag.matches(&ids) {
            return Ok(dev);
        }
    }
    let found: Vec<PathBuf> = block_devices()
        .into_iter()
        .filter(|d| read_head(d).is_some_and(|h| tag.matches(&ids_of(&h))))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "{}: no block device carries this {} (looked in {} and read every block device \
             this user can open: ext4/ldiskfs superblocks and native mmp areas{})",
            tag.shown(),
            if matches!(tag, Tag::Uuid(_)) {
                "UUID"
            } else {
                "label"
            },
            if matches!(tag, Tag::Uuid(_)) {
                "/dev/disk/by-uuid"
            } else {
                "/dev/disk/by-label"
            },
            if matches!(tag, Tag::Label(_)) {
                ", which have no label"
            } else {
                ""
            }
        )),
        many => Err(format!(
            "{}: {} devices carry it ({}); name one of them, or give each file system a \
             unique {}",
            tag.shown(),
            many.len(),
            many.iter()
                .map(|p| crate::show(p))
                .collect::<Vec<_>>()
                .join(", "),
            if matches!(tag, Tag::Uuid(_)) {
                "UUID (`tune2fs -U random`)"
            } else {
                "label (`e2label`)"
            }
        )),
    }
}

/// [`device`] for each path, in place.
///
/// # Errors
/// The first name that does not resolve.
pub(crate) fn all<'a>(paths: impl IntoIterator<Item = &'a mut PathBuf>) -> Result<(), String> {
    for p in paths {
        *p = device(p)?;
    }
    Ok(())
}

/// What names one device, whatever the path: the device number of a block device, else
/// the file's file system and inode.
pub(crate) type DeviceKey = (bool, u64, u64);

/// The [`DeviceKey`] of `p`; `None` when it cannot be read.
pub(crate) fn device_key(p: &Path) -> Option<DeviceKey> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(p).ok()?;
    if m.file_type().is_block_device() {
        Some((true, m.rdev(), 0))
    } else {
        Some((false, m.dev(), m.ino()))
    }
}

/// Refuses a device named twice (`f.img ./f.img`, a symlink and its target, two nodes of one
/// block device): holding it twice would make the two holders see each other as another host.
pub(crate) fn refuse_duplicates(devices: &[PathBuf]) -> Result<(), String> {
    let mut seen: Vec<(&PathBuf, Option<DeviceKey>)> = Vec::with_capacity(devices.len());
    for d in devices {
        let k = device_key(d);
        if let Some((first, _)) = seen
            .iter()
            .find(|(p, pk)| *p == d || (k.is_some() && *pk == k))
        {
            return Err(if *first == d {
                format!("{} is given twice", show(d))
            } else {
                format!(
                    "{} and {} are the same device; give each device once",
                    show(first),
                    show(d)
                )
            });
        }
        seen.push((d, k));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns")]
mod tests {
    use super::*;

    #[test]
    fn tags_parse() {
        assert_eq!(
            Tag::parse(Path::new("UUID=\"AB-cd\"")),
            Some(Tag::Uuid("ab-cd".into()))
        );
        assert_eq!(
            Tag::parse(Path::new("LABEL=ost0")),
            Some(Tag::Label(b"ost0".to_vec()))
        );
        assert_eq!(Tag::parse(Path::new("/dev/sdb")), None);
        assert_eq!(Tag::parse(Path::new("./UUID=x")), None);
    }

    #[test]
    fn ids_of_ext4_and_native() {
        let mut h = vec![0u8; 2048];
        h[1024 + 0x38] = 0x53;
        h[1024 + 0x39] = 0xef;
        for i in 0..16 {
            h[1024 + 0x68 + i] = i as u8;
        }
        h[1024 + 0x78..1024 + 0x7c].copy_from_slice(b"ost0");
        let ids = ids_of(&h);
        assert_eq!(
            ids.uuid.as_deref(),
            Some("00010203-0405-0607-0809-0a0b0c0d0e0f")
        );
        assert_eq!(ids.label.as_deref(), Some(&b"ost0"[..]));
        let mut n = vec![0u8; 512];
        n[..8].copy_from_slice(b"MMPNATIV");
        n[0x30] = 0xff;
        let ids = ids_of(&n);
        assert!(ids.uuid.is_some_and(|u| u.starts_with("ff000000-")));
        assert_eq!(ids_of(&[0u8; 2048]), Ids::default());
    }
}
