//! The fuzz targets' bodies (`mmp_tests::fuzz_bodies`, shared with `fuzz/fuzz_targets/`) as
//! ordinary tests:
//!
//! * `fuzz_corpus_replay`: every committed seed input under `fuzz/corpus/<target>/` (real
//!   superblocks and MMP blocks from mke2fs images, native records from `mmp format` and
//!   `mmp hold`, machine event scripts), and any crash reproducer committed under
//!   `fuzz/regressions/<target>/`.
//! * `fuzz_generated_inputs`: a deterministic stable-Rust stand-in for the fuzzer (random
//!   bytes, and corpus inputs mutated: bit flips, byte stores, truncation, extension,
//!   splices), `MMP_FUZZ_ITERS` inputs per target (default 2000; `bench/fuzz-soak` runs
//!   hundreds of thousands), `MMP_FUZZ_SEED` for another sequence. A failing input is
//!   written to a file and named in the panic message.

use std::path::{Path, PathBuf};

use mmp_tests::fuzz_bodies::{self, TARGETS};
use mmp_tests::sim::{SimRng, mix, parse_seed};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(PathBuf, Vec<u8>)> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let d = std::fs::read(&p).expect("read corpus file");
            (p, d)
        })
        .collect();
    v.sort();
    v
}

/// Runs one input, turning a panic into a saved reproducer and a clear message.
fn run_one(target: &str, data: &[u8], origin: &str) {
    let res = std::panic::catch_unwind(|| fuzz_bodies::run(target, data));
    if let Err(e) = res {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_default();
        let out = std::env::temp_dir().join(format!(
            "mmp-fuzz-{target}-{:016x}",
            mix(data.iter().fold(0u64, |h, &b| mix(h ^ u64::from(b))))
        ));
        let _ = std::fs::write(&out, data);
        panic!(
            "fuzz target {target} failed on {origin} ({} bytes, saved as {}): {msg}\n\
             replay: cargo fuzz run {target} {} (in fuzz/), or copy it to \
             fuzz/regressions/{target}/",
            data.len(),
            out.display(),
            out.display()
        );
    }
}

#[test]
fn fuzz_corpus_replay() {
    let root = fuzz_dir();
    let mut total = 0;
    for target in TARGETS {
        let corpus = inputs(&root.join("corpus").join(target));
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{target}: expected a committed seed corpus, found {} files",
            corpus.len()
        );
        let regressions = inputs(&root.join("regressions").join(target));
        for (p, d) in corpus.iter().chain(&regressions) {
            run_one(target, d, &p.display().to_string());
        }
        eprintln!(
            "fuzz_corpus_replay: {target}: {} corpus inputs, {} regressions",
            corpus.len(),
            regressions.len()
        );
        total += corpus.len() + regressions.len();
    }
    assert!(total > 0);
}

#[test]
fn fuzz_machine_scripts_reach_their_states() {
    // The committed machine_events seeds are not noise: each reaches what its name says.
    use mmp_core::machine::{Loss, Outcome, Refusal};
    for (name, data) in machine_scripts() {
        let s = fuzz_bodies::machine_events(&data);
        let ok = match name.rsplit_once('-').map_or(name.as_str(), |(_, k)| k) {
            "release" => s.acquired && s.outcome == Some(Outcome::Released),
            "fence" => s.acquired && matches!(s.outcome, Some(Outcome::Lost(Loss::Fenced { .. }))),
            "foreign" => {
                s.acquired && matches!(s.outcome, Some(Outcome::Lost(Loss::ForeignWrite(_))))
            }
            "torn" => s.acquired && matches!(s.outcome, Some(Outcome::Lost(_))),
            "claim" => s.outcome == Some(Outcome::Aborted) && s.writes == 2,
            "stale" => matches!(s.outcome, Some(Outcome::Safe { stale: true, .. })),
            "clear" => s.outcome == Some(Outcome::Cleared),
            "zero" => s.outcome == Some(Outcome::Refused(Refusal::NoHostid)),
            "inputs" => s.writes >= 1,
            _ => false,
        };
        assert!(ok, "{name}: {s:?}");
    }
}

/// One generated input: random bytes, or a mutated corpus input.
fn generate(r: &mut SimRng, corpus: &[(PathBuf, Vec<u8>)], out: &mut Vec<u8>) {
    out.clear();
    if corpus.is_empty() || r.below(4) == 0 {
        let n = r.below(2100) as usize;
        out.extend((0..n).map(|_| r.next_u64() as u8));
        return;
    }
    out.extend_from_slice(&corpus[r.below(corpus.len() as u64) as usize].1);
    for _ in 0..=r.below(8) {
        match r.below(7) {
            0 | 1 if !out.is_empty() => {
                let i = r.below(out.len() as u64) as usize;
                out[i] ^= 1 << r.below(8);
            }
            2 if !out.is_empty() => {
                let i = r.below(out.len() as u64) as usize;
                out[i] = [0, 0xFF, 0x7F, 0x80, 1][r.below(5) as usize];
            }
            3 if !out.is_empty() => {
                let n = r.below(out.len() as u64 + 1) as usize;
                out.truncate(n);
            }
            4 => {
                let n = r.below(64) as usize;
                out.extend((0..n).map(|_| r.next_u64() as u8));
            }
            5 => {
                // Splice a slice of another corpus input.
                let other = &corpus[r.below(corpus.len() as u64) as usize].1;
                if !other.is_empty() && !out.is_empty() {
                    let a = r.below(other.len() as u64) as usize;
                    let n = r.below((other.len() - a) as u64 + 1) as usize;
                    let at = r.below(out.len() as u64) as usize;
                    let end = (at + n).min(out.len());
                    out[at..end].copy_from_slice(&other[a..a + (end - at)]);
                }
            }
            _ if !out.is_empty() => {
                // Overwrite a 4-byte little-endian field with an interesting value.
                let i = r.below(out.len() as u64) as usize;
                let v: u32 = [
                    0,
                    1,
                    u32::MAX,
                    0xFF4D_4D50,
                    0xE24D_4D4F,
                    0xE24D_4D50,
                    5,
                    300,
                ][r.below(8) as usize];
                for (k, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = out.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn fuzz_generated_inputs() {
    let iters: u64 = std::env::var("MMP_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000);
    let seed = std::env::var("MMP_FUZZ_SEED")
        .ok()
        .and_then(|v| parse_seed(&v))
        .unwrap_or(0xF022);
    let only = std::env::var("MMP_FUZZ_TARGET").ok();
    let root = fuzz_dir();
    let started = std::time::Instant::now();
    for target in TARGETS {
        if only.as_deref().is_some_and(|o| o != target) {
            continue;
        }
        let corpus = inputs(&root.join("corpus").join(target));
        let t = std::time::Instant::now();
        let mut r = SimRng::new(mix(
            seed ^ mix(target.len() as u64 ^ target.as_bytes()[0] as u64)
        ));
        let mut buf = Vec::new();
        for i in 0..iters {
            generate(&mut r, &corpus, &mut buf);
            run_one(
                target,
                &buf,
                &format!("generated input {i} (MMP_FUZZ_SEED={seed})"),
            );
        }
        eprintln!(
            "fuzz_generated_inputs: target={target} executions={iters} seed={seed} wall={:.2}s",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "fuzz_generated_inputs: total wall={:.2}s",
        started.elapsed().as_secs_f64()
    );
}

// ----- the seed corpus ------------------------------------------------------------------------

/// A machine-events script: header, then commands (see `fuzz_bodies::machine_events`).
struct Script(Vec<u8>);

impl Script {
    /// `head` picks layout (bits 0-1), op (bits 2-3), force (bit 6).
    fn new(head: u8, update_interval: u8, initial: u8) -> Script {
        let mut v = vec![head];
        if head % 4 >= 2 {
            v.push(update_interval);
        }
        v.extend_from_slice(&0x1234_5678u32.to_le_bytes()); // random seed
        v.extend_from_slice(&0u16.to_le_bytes()); // start time
        v.push(initial);
        v.extend_from_slice(&401u32.to_le_bytes()); // initial seq (ext4 check interval 1)
        Script(v)
    }
    /// Complete the pending read with the device's bytes, or land the pending write.
    fn step(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0, 10, 0, 10]);
        self
    }
    /// Complete the pending read with `sub` (3 another host's live record, 5 a flipped
    /// byte, 7 EIO).
    fn read(&mut self, sub: u8) -> &mut Self {
        self.0.extend_from_slice(&[0, 10, sub, 1]);
        self
    }
    /// Perform the pending write with `fate` (0 lands, 4 lost, 5 EIO landed, 6 EIO, 7 torn).
    fn write(&mut self, fate: u8) -> &mut Self {
        self.0.extend_from_slice(&[0, 10, fate, 10]);
        self
    }
    /// Advance to the machine's next deadline and deliver the timeout.
    fn deadline(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[3, 2, 0, 0]);
        self
    }
    /// A jump in time of about 12.8 s (longer than any lease here).
    fn sleep(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[3, 3, 0x10, 0]);
        self
    }
    fn release(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[5, 1, 0, 0]);
        self
    }
    /// `n` rounds of: the next deadline, then two I/O steps.
    fn rounds(&mut self, n: usize) -> &mut Self {
        for _ in 0..n {
            self.deadline().step().step();
        }
        self
    }
}

fn machine_scripts() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // Layouts: 0 native, 2 ext4 csum, 3 ext4 no csum; ops: 0 acquire, 8 check, 12 clear.
    for (lname, l) in [("native", 0u8), ("ext4csum", 2), ("ext4", 3)] {
        // Clean device: claim, verify (ext4: 11 s of 1 s polls), hold, release.
        let mut s = Script::new(l, 1, 0);
        s.step().step().rounds(20).release().step().step();
        out.push((format!("{lname}-acquire-hold-release"), s.0));
        // Another host's live block, forced: watch, claim, verify, hold, then the lease
        // lapses (the machine is not run for a while).
        let mut s = Script::new(l | 0x40, 1, 1);
        s.step().rounds(60).sleep().deadline().step();
        out.push((format!("{lname}-force-takeover-fence"), s.0));
        // Held, then I/O errors and a foreign write.
        let mut s = Script::new(l, 1, 0);
        s.step()
            .step()
            .rounds(20)
            .deadline()
            .read(7)
            .deadline()
            .step()
            .write(6);
        s.deadline().read(3);
        out.push((format!("{lname}-held-eio-foreign"), s.0));
        // Lost and torn writes while held.
        let mut s = Script::new(l, 1, 0);
        s.step()
            .step()
            .rounds(20)
            .deadline()
            .step()
            .write(4)
            .deadline()
            .step();
        s.deadline().step().write(7).deadline().step();
        out.push((format!("{lname}-lost-torn"), s.0));
        // Abort during the claim wait: wait an interval, re-read, restore.
        let mut s = Script::new(l, 1, 0);
        s.step().step().release().deadline().step().step();
        out.push((format!("{lname}-abort-claim"), s.0));
        // Check and clear.
        let mut s = Script::new(l | 8, 1, 1);
        s.step().rounds(30);
        out.push((format!("{lname}-check-stale"), s.0));
        // Clear: ext4 resets even a corrupt block; a native clear needs a readable record.
        let mut s = Script::new(l | 12, 1, 2);
        s.read(if l == 0 { 0 } else { 5 }).write(0);
        out.push((format!("{lname}-clear"), s.0));
    }
    // Hostid 0 (refused at once) and spurious inputs.
    out.push((
        "hostid-zero".into(),
        vec![0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ));
    let mut s = Script::new(0, 1, 0);
    s.0.extend_from_slice(&[6, 0, 0, 0, 6, 1, 0, 0, 6, 2, 0, 0, 6, 3, 0, 0]);
    s.step().step();
    s.0.extend_from_slice(&[6, 0, 0, 0, 6, 1, 0, 0, 6, 2, 0, 0]);
    out.push(("spurious-inputs".into(), s.0));
    out
}

#[test]
#[ignore = "writes fuzz/corpus (run once: MMP_FUZZ_WRITE_CORPUS=1 cargo test fuzz_write_corpus -- --ignored)"]
fn fuzz_write_corpus() {
    use mmp_core::format::{ext4, native};
    use mmp_core::machine::{Config, Identity, IoRequest, Layout, MAX_RECORD_LEN, Machine, Op};
    use mmp_core::time::{Instant, Now};
    if std::env::var_os("MMP_FUZZ_WRITE_CORPUS").is_none() {
        return;
    }
    let root = fuzz_dir().join("corpus");
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = root.join(target);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(name), data).expect("write corpus file");
    };
    // ext4: superblocks and MMP blocks of real mke2fs images.
    let mke2fs = mmp_tests::find_tool("mke2fs").expect("mke2fs");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, opts, size) in [
        ("mmp-csum-1k", "-O mmp,metadata_csum -b 1024", "8M"),
        ("mmp-nocsum-1k", "-O mmp,^metadata_csum -b 1024", "8M"),
        (
            "mmp-csum-4k",
            "-O mmp,metadata_csum -b 4096 -E mmp_update_interval=1",
            "32M",
        ),
        (
            "mmp-csumseed-4k",
            "-O mmp,metadata_csum,metadata_csum_seed -b 4096",
            "32M",
        ),
        ("nommp-4k", "-O ^mmp -b 4096", "16M"),
    ] {
        let img = dir.path().join(name);
        let st = std::process::Command::new(&mke2fs)
            .args(["-q", "-F", "-t", "ext4"])
            .args(opts.split_whitespace())
            .arg(&img)
            .arg(size)
            .status()
            .expect("mke2fs");
        assert!(st.success(), "mke2fs {opts}");
        let bytes = std::fs::read(&img).expect("read image");
        put("parse_ext4", &format!("sb-{name}"), &bytes[1024..2048]);
        let Ok(t) = mmp_linux::target::open(&img, false) else {
            continue;
        };
        if let Layout::Ext4 {
            offset_bytes,
            csum_seed,
            ..
        } = t.layout
        {
            let off = usize::try_from(offset_bytes).expect("offset");
            let mut v = csum_seed.unwrap_or(0).to_le_bytes().to_vec();
            v.extend_from_slice(&bytes[off..off + ext4::STRUCT_LEN]);
            put("parse_ext4", &format!("mmp-{name}"), &v);
        }
    }
    // ext4 blocks as mmp writes them (claim, heartbeat, CLEAN), seed first.
    for (i, seq) in [
        1u32,
        0x1234_5678,
        ext4::SEQ_MAX,
        ext4::SEQ_CLEAN,
        ext4::SEQ_FSCK,
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = ext4::Block::new(seq, 1_700_000_000, b"node-a", b"/dev/sdb", 10);
        let mut v = 0x643D_BF5Bu32.to_le_bytes().to_vec();
        let mut buf = [0u8; ext4::STRUCT_LEN];
        b.emit(&mut buf, Some(0x643D_BF5B));
        v.extend_from_slice(&buf);
        put("parse_ext4", &format!("block-{i}"), &v);
    }
    // native: formatted, and every record a holder writes (claim, beats, CLEAN).
    let mut buf = [0u8; native::RECORD_LEN];
    native::Record::formatted([9; 16], 100, 10, 1_700_000_000_000).emit(&mut buf);
    put("parse_native", "formatted", &buf);
    let mut r = native::Record::formatted([9; 16], 1000, 3, 1_700_000_000_000);
    r.state = native::State::Maintenance;
    r.emit(&mut buf);
    put("parse_native", "maintenance", &buf);
    let layout = Layout::Native { offset_bytes: 0 };
    let mut disk = [0u8; MAX_RECORD_LEN];
    native::Record::formatted([9; 16], 100, 10, 1_700_000_000_000).emit(&mut disk);
    let cfg = Config::new(layout, Identity::new(0x1a2b, b"node-a", b"/dev/sdc1"), 3);
    let now = |t: u64| Now::new(Instant::from_micros(t), 1_700_000_000_000 + t / 1000);
    let mut t = 1_000_000;
    let mut m = Machine::new(cfg, Op::Acquire, now(t));
    let mut writes = 0;
    while writes < 5 {
        match m.poll_io() {
            Some(IoRequest::Read { .. }) => m.handle_read_done(now(t), &disk[..512]),
            Some(IoRequest::Write { .. }) => {
                assert!(m.emit_block(now(t), &mut disk));
                put("parse_native", &format!("written-{writes}"), &disk[..512]);
                writes += 1;
                if writes == 4 {
                    m.release(now(t));
                }
                m.handle_write_done(now(t));
            }
            None => {
                if m.outcome().is_some() {
                    break;
                }
                t = m.poll_timeout().expect("deadline").as_micros();
                m.handle_timeout(now(t));
            }
        }
        t += 100;
    }
    for (name, data) in machine_scripts() {
        put("machine_events", &name, &data);
    }
}
