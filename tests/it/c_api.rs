//! libmmp, the C API: the generated header, the C test programs in `tests/c/` built against
//! the installed library (sanitizers, valgrind, static linking, C++), the example mount
//! helper, and Rust-side checks of the boundary (NULLs, panics, poisoning).
//!
//! The C programs are compiled against the header and library that `scripts/install-libmmp`
//! installs into a temporary prefix, found through `pkg-config`, exactly as a user would.

use std::ffi::{CStr, CString, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `[workspace.package] version` from the root `Cargo.toml`, as text and as three numbers.
fn cargo_version() -> (String, u32, u32, u32) {
    let toml = std::fs::read_to_string(repo().join("Cargo.toml")).expect("read Cargo.toml");
    let mut in_pkg = false;
    for line in toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_pkg = l == "[workspace.package]";
        } else if in_pkg && let Some(v) = l.strip_prefix("version") {
            let v = v.trim().trim_start_matches('=').trim().trim_matches('"');
            let parts: Vec<u32> = v
                .split('.')
                .map(|p| p.parse().expect("numeric version part"))
                .collect();
            assert_eq!(parts.len(), 3, "version {v:?} is not MAJOR.MINOR.PATCH");
            return (v.to_string(), parts[0], parts[1], parts[2]);
        }
    }
    panic!("no [workspace.package] version in Cargo.toml");
}

/// Generates the header text with cbindgen (the library, pinned by Cargo.lock).
fn generate_header() -> String {
    let ffi = repo().join("mmp-ffi");
    let mut config =
        cbindgen::Config::from_file(ffi.join("cbindgen.toml")).expect("read cbindgen.toml");
    let (_, major, minor, patch) = cargo_version();
    let parts = format!(
        "\n/* From Cargo.toml. */\n#define MMP_VERSION_MAJOR {major}\n#define MMP_VERSION_MINOR {minor}\n#define MMP_VERSION_PATCH {patch}\n"
    );
    config.after_includes = Some(parts + config.after_includes.as_deref().unwrap_or(""));
    let bindings = cbindgen::Builder::new()
        .with_crate(&ffi)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

/// The committed header matches what cbindgen generates now; `MMP_BLESS=1` rewrites it.
#[test]
fn header_is_fresh() {
    let path = repo().join("include").join("mmp.h");
    let fresh = generate_header();
    if std::env::var_os("MMP_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("include/")).expect("mkdir include");
        std::fs::write(&path, &fresh).expect("write include/mmp.h");
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "include/mmp.h is stale (first difference at line {}): regenerate it with\n  \
             MMP_BLESS=1 cargo test -p mmp-cli --test integration header_is_fresh\n\
             committed: {:?}\ngenerated: {:?}",
            first + 1,
            committed.lines().nth(first),
            fresh.lines().nth(first)
        );
    }
}

/// Every `mmp_result` value appears in the header once, and nothing else does.
#[test]
fn header_lists_every_result() {
    let header = std::fs::read_to_string(repo().join("include").join("mmp.h")).expect("mmp.h");
    let in_header: Vec<u32> = header
        .lines()
        .filter_map(|l| l.trim().strip_prefix("MMP_RESULT_"))
        .filter_map(|l| l.split(" = ").nth(1))
        .map(|v| v.trim_end_matches(',').parse().expect("number"))
        .collect();
    let in_rust: Vec<u32> = mmp::result::ALL.iter().map(|r| *r as u32).collect();
    assert_eq!(in_header, in_rust);
}

// ---------------------------------------------------------------------------------------
// Building C against the installed library.

/// `target/` of this test run (the executable is `target/<profile>/deps/integration-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// The tools the C tests need, or a printed reason to skip.
fn c_tools() -> Option<(PathBuf, PathBuf)> {
    let Some(gcc) = mmp_tests::find_tool("gcc") else {
        mmp_tests::skip("gcc not found: C API tests skipped");
        return None;
    };
    let Some(pkg) = mmp_tests::find_tool("pkg-config") else {
        mmp_tests::skip("pkg-config not found: C API tests skipped");
        return None;
    };
    Some((gcc, pkg))
}

/// Runs `scripts/install-libmmp` once per test run into `target/c-api/prefix`.
fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let target = target_dir();
        let prefix = target.join("c-api").join("prefix");
        let _ = std::fs::remove_dir_all(&prefix);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(repo().join("scripts").join("install-libmmp"))
            .arg(&prefix)
            .env("CARGO", cargo)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("DESTDIR")
            .output()
            .expect("run scripts/install-libmmp");
        assert!(
            out.status.success(),
            "install-libmmp failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        prefix
    })
}

/// `pkg-config ARGS mmp` against the installed prefix, split into arguments.
fn pkg_config(pkg: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new(pkg)
        .args(args)
        .arg("mmp")
        .env("PKG_CONFIG_PATH", prefix().join("lib").join("pkgconfig"))
        .output()
        .expect("run pkg-config");
    assert!(
        out.status.success(),
        "pkg-config {args:?} mmp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("pkg-config output")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

const STRICT: &[&str] = &[
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
    "-g",
];
const SANITIZE: &[&str] = &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"];

/// For `api.c` under ASan or valgrind: a 3 s fail window instead of 1 s, so that a heartbeat
/// thread slowed by the instrumentation on a loaded machine does not lose a device its test
/// holds (`test_cancel` saw that under valgrind with the lab running beside it).
const SLOWED: &[&str] = &["-DFAIL_INTERVALS=30u"];

/// Compiles `src` into `target/c-api/bin/NAME` with gcc and the flags pkg-config gives,
/// plus an rpath to the installed library. Panics with gcc's output on failure.
fn compile(gcc: &Path, pkg: &Path, src: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let bin_dir = target_dir().join("c-api").join("bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir bin");
    let out_path = bin_dir.join(name);
    let lib = prefix().join("lib");
    let out = Command::new(gcc)
        .args(STRICT)
        .args(extra)
        .arg("-I")
        .arg(repo().join("tests").join("c"))
        .arg(src)
        .args(pkg_config(pkg, &["--cflags", "--libs"]))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&out_path)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out_path
}

/// Runs a compiled test program; panics with its output unless it exits 0.
fn run_c(mut cmd: Command, what: &str) {
    cmd.env_remove("MMP_HOSTID")
        .env_remove("MMP_FAULT_EIO_FILE")
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    let out = cmd.output().expect("run the C test program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- {what}: stdout\n{stdout}--- {what}: stderr\n{stderr}");
    assert!(out.status.success(), "{what} failed: {}", out.status);
    assert!(
        stdout.contains("all passed") || what.contains("version"),
        "{what} did not finish"
    );
}

/// A 1 MiB image file in `dir` (the C program formats it).
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("dev.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("write image");
    path
}

fn api_cmd(bin: &Path, dev: &Path, scratch: &Path, loss_bound_ms: u64) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(dev)
        .arg(scratch)
        .env("MMP_TEST_LOSS_BOUND_MS", loss_bound_ms.to_string());
    cmd
}

fn scratch(dir: &Path) -> PathBuf {
    let s = dir.join("scratch");
    std::fs::create_dir_all(&s).expect("mkdir scratch");
    s
}

/// The API tests (`tests/c/api.c`) on an image file, under ASan and UBSan.
#[test]
fn c_api_file_sanitizers() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let src = repo().join("tests").join("c").join("api.c");
    let bin = compile(&gcc, &pkg, &src, "api-asan", &[SANITIZE, SLOWED].concat());
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    run_c(
        api_cmd(&bin, &dev, &scratch(dir.path()), 300),
        "api (file, ASan+UBSan)",
    );
}

/// The same tests under valgrind (built without sanitizers): no leaks, no invalid accesses.
#[test]
fn c_api_file_valgrind() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let Some(valgrind) = mmp_tests::find_tool("valgrind") else {
        mmp_tests::skip("valgrind not found");
        return;
    };
    let src = repo().join("tests").join("c").join("api.c");
    let bin = compile(&gcc, &pkg, &src, "api-plain", SLOWED);
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    let mut cmd = Command::new(valgrind);
    cmd.args([
        "--leak-check=full",
        "--error-exitcode=1",
        "--errors-for-leak-kinds=definite,possible",
        "--child-silent-after-fork=yes",
        "--quiet",
    ])
    .arg(format!(
        "--suppressions={}",
        repo().join("tests/c/valgrind.supp").display()
    ))
    .arg(&bin)
    .arg(&dev)
    .arg(scratch(dir.path()))
    // valgrind slows everything down; the loss must still come well within the fail window.
    .env("MMP_TEST_LOSS_BOUND_MS", "900");
    run_c(cmd, "api (file, valgrind)");
}

/// The API tests on a loop device (root), under ASan and UBSan.
#[test]
fn loop_c_api() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = image(dir.path());
    let Some(lo) = mmp_tests::Loop::attach(&file) else {
        return;
    };
    let src = repo().join("tests").join("c").join("api.c");
    let bin = compile(&gcc, &pkg, &src, "api-asan-loop", SANITIZE);
    run_c(
        api_cmd(&bin, &lo.dev, &scratch(dir.path()), 300),
        "api (loop device, ASan+UBSan)",
    );
}

/// The shared library exports the `mmp_*` API and nothing else (no Rust runtime symbols to
/// clash with another library), and every function of the header is among them (the static
/// library: `c_api_static_library_exports_only_the_api`).
#[test]
fn c_api_shared_library_exports_only_the_api() {
    let Some(_) = c_tools() else { return };
    let Some(nm) = mmp_tests::find_tool("nm") else {
        mmp_tests::skip("nm not found");
        return;
    };
    let out = Command::new(nm)
        .args(["-D", "--defined-only"])
        .arg(prefix().join("lib").join("libmmp.so"))
        .output()
        .expect("nm");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let foreign: Vec<&&str> = exported.iter().filter(|s| !s.starts_with("mmp_")).collect();
    assert!(foreign.is_empty(), "libmmp.so exports {foreign:?}");
    let header = std::fs::read_to_string(repo().join("include").join("mmp.h")).expect("mmp.h");
    // Function declarations: unindented, not a typedef or macro, `... mmp_name(`.
    let declared: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with([' ', '#', '/', '*', '}']) && !l.starts_with("typedef"))
        .filter_map(|l| l.split_once('(').map(|(head, _)| head))
        .filter_map(|head| head.split_whitespace().last())
        .map(|n| n.trim_start_matches('*'))
        .filter(|n| n.starts_with("mmp_"))
        .collect();
    assert!(declared.len() >= 26, "found only {declared:?}");
    for name in &declared {
        assert!(
            exported.contains(name),
            "{name} is declared but not exported"
        );
    }
}

fn lifecycle_cmd(bin: &Path, dev: &Path, scratch: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(dev)
        .arg(scratch)
        .env("MMP_TEST_RELEASE_BOUND_MS", "5000");
    cmd
}

/// `tests/c/lifecycle.c` (issue 17) on an image file, under ASan and UBSan (the fork test
/// runs in `c_api_fork_ubsan`): four threads polling status while a release completes within 5 s with
/// no loss, calls taking turns, a progress callback blocking past the fail window, cancel
/// during the claim, lapsed holds, cancel only in flight, the phases reported, the watchdog
/// results, errors with context, and the event descriptor.
#[test]
fn c_api_lifecycle_sanitizers() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let src = repo().join("tests").join("c").join("lifecycle.c");
    let mut extra = SANITIZE.to_vec();
    extra.push("-pthread");
    let bin = compile(&gcc, &pkg, &src, "lifecycle-asan", &extra);
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    run_c(
        lifecycle_cmd(&bin, &dev, &scratch(dir.path())),
        "lifecycle (file, ASan+UBSan)",
    );
}

/// The fork test of `tests/c/lifecycle.c` alone, built with UBSan only (ASan's allocator is
/// not fork-safe in a multi-threaded process, glibc's is): set up, hold, fork; the child
/// sees `owned` 0 and gets `MMP_RESULT_FORKED` from release and every other call on the
/// inherited handle, holds another device with a handle of its own; the parent keeps
/// holding and releases.
#[test]
fn c_api_fork_ubsan() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let src = repo().join("tests").join("c").join("lifecycle.c");
    let bin = compile(
        &gcc,
        &pkg,
        &src,
        "lifecycle-ubsan",
        &[
            "-fsanitize=undefined",
            "-fno-omit-frame-pointer",
            "-pthread",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    let mut cmd = lifecycle_cmd(&bin, &dev, &scratch(dir.path()));
    cmd.env("MMP_TEST_ONLY", "fork");
    run_c(cmd, "lifecycle fork (file, UBSan)");
}

/// The same on a loop device (root), under ASan and UBSan.
#[test]
fn loop_c_api_lifecycle() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = image(dir.path());
    let Some(lo) = mmp_tests::Loop::attach(&file) else {
        return;
    };
    let src = repo().join("tests").join("c").join("lifecycle.c");
    let mut extra = SANITIZE.to_vec();
    extra.push("-pthread");
    let bin = compile(&gcc, &pkg, &src, "lifecycle-asan-loop", &extra);
    run_c(
        lifecycle_cmd(&bin, &lo.dev, &scratch(dir.path())),
        "lifecycle (loop device, ASan+UBSan)",
    );
}

/// `tests/c/acquire.c`: the non-blocking acquire (`mmp_device_acquire_start`, `_progress`,
/// `_finish`) from one thread with `poll`: two devices at once, all or nothing when the
/// second is held by another handle, cancel, misuse, a loss afterwards.
fn acquire_test(name: &str, devs: [&Path; 2], what: &str) {
    let Some((gcc, pkg)) = c_tools() else { return };
    let src = repo().join("tests").join("c").join("acquire.c");
    let bin = compile(&gcc, &pkg, &src, name, SANITIZE);
    let mut cmd = Command::new(bin);
    cmd.args(devs);
    run_c(cmd, what);
}

/// The non-blocking acquire on two image files, under ASan and UBSan.
#[test]
fn c_api_acquire_start_sanitizers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    for p in [&a, &b] {
        std::fs::write(p, vec![0u8; 1 << 20]).expect("write image");
    }
    acquire_test("acquire-asan", [&a, &b], "acquire (files, ASan+UBSan)");
}

/// The same under valgrind (built without sanitizers): no leaks, no invalid accesses, also
/// for acquires given up, cancelled or freed while they run.
#[test]
fn c_api_acquire_start_valgrind() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let Some(valgrind) = mmp_tests::find_tool("valgrind") else {
        mmp_tests::skip("valgrind not found");
        return;
    };
    let src = repo().join("tests").join("c").join("acquire.c");
    let bin = compile(&gcc, &pkg, &src, "acquire-plain", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    for p in [&a, &b] {
        std::fs::write(p, vec![0u8; 1 << 20]).expect("write image");
    }
    let mut cmd = Command::new(valgrind);
    cmd.args([
        "--leak-check=full",
        "--error-exitcode=1",
        "--errors-for-leak-kinds=definite,possible",
        "--quiet",
    ])
    .arg(format!(
        "--suppressions={}",
        repo().join("tests/c/valgrind.supp").display()
    ))
    .arg(&bin)
    .arg(&a)
    .arg(&b);
    run_c(cmd, "acquire (files, valgrind)");
}

/// The same on two loop devices (root).
#[test]
fn loop_c_api_acquire_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    for p in [&a, &b] {
        std::fs::write(p, vec![0u8; 1 << 20]).expect("write image");
    }
    let Some(la) = mmp_tests::Loop::attach(&a) else {
        return;
    };
    let Some(lb) = mmp_tests::Loop::attach(&b) else {
        return;
    };
    acquire_test(
        "acquire-asan-loop",
        [&la.dev, &lb.dev],
        "acquire (loop devices, ASan+UBSan)",
    );
}

fn version_defines() -> Vec<String> {
    let (text, major, minor, patch) = cargo_version();
    let number = (major << 16) | (minor << 8) | patch;
    vec![
        format!("-DEXPECT_MAJOR={major}"),
        format!("-DEXPECT_MINOR={minor}"),
        format!("-DEXPECT_PATCH={patch}"),
        format!("-DEXPECT_NUMBER={number}"),
        format!("-DEXPECT_STRING=\"{text}\""),
    ]
}

/// Every version macro, the derived `MMP_VERSION_NUMBER` included, matches Cargo.toml; and
/// so does `mmp_version()` at run time.
#[test]
fn c_version_macros_match_cargo_toml() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let defines = version_defines();
    let mut extra: Vec<&str> = defines.iter().map(String::as_str).collect();
    extra.extend_from_slice(SANITIZE);
    let src = repo().join("tests").join("c").join("version.c");
    let bin = compile(&gcc, &pkg, &src, "version", &extra);
    run_c(Command::new(bin), "version");
    // SAFETY: `mmp_version` returns a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(mmp::mmp_version()) };
    assert_eq!(v.to_str().expect("ASCII"), cargo_version().0);
}

/// Links `src` with gcc: `pc_args` are the pkg-config arguments (with the package name);
/// `extra` goes before the source. Panics with gcc's output on failure.
fn link_with(
    gcc: &Path,
    pkg: &Path,
    src: &Path,
    name: &str,
    extra: &[&str],
    pc: &[&str],
) -> PathBuf {
    let bin_dir = target_dir().join("c-api").join("bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir bin");
    let out_path = bin_dir.join(name);
    let pc_out = Command::new(pkg)
        .args(pc)
        .env("PKG_CONFIG_PATH", prefix().join("lib").join("pkgconfig"))
        .output()
        .expect("run pkg-config");
    assert!(pc_out.status.success(), "pkg-config {pc:?} failed");
    let flags = String::from_utf8(pc_out.stdout).expect("pkg-config output");
    let out = Command::new(gcc)
        .args(STRICT)
        .args(extra)
        .arg("-I")
        .arg(repo().join("tests").join("c"))
        .arg(src)
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&out_path)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "linking {} with pkg-config {pc:?} ({flags}) failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out_path
}

/// Whether an executable loads libmmp.so, or anything at all (`readelf -d`: NEEDED entries).
fn needed_libs(bin: &Path) -> Option<String> {
    let readelf = mmp_tests::find_tool("readelf")?;
    let out = Command::new(readelf).arg("-d").arg(bin).output().ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// `pkg-config --libs mmp-static` links `libmmp.a` into an otherwise dynamic program with
/// nothing else to add, and the whole API test (`tests/c/api.c`, ASan + UBSan) passes
/// against it: heartbeat threads, callbacks and all.
#[test]
fn c_api_static_link() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let src = repo().join("tests").join("c").join("api.c");
    let bin = link_with(
        &gcc,
        &pkg,
        &src,
        "api-static",
        SANITIZE,
        &["--cflags", "--libs", "mmp-static"],
    );
    if let Some(needed) = needed_libs(&bin) {
        assert!(
            !needed.contains("libmmp"),
            "linked dynamically after all:\n{needed}"
        );
        assert!(
            needed.contains("libc.so"),
            "not a dynamic program:\n{needed}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    run_c(
        api_cmd(&bin, &dev, &scratch(dir.path()), 300),
        "api (static libmmp.a)",
    );
}

/// A fully static program (`gcc -static`, glibc's `libc.a`) links with
/// `pkg-config --static --libs mmp` (the linker then takes `libmmp.a` for `-lmmp`) and the
/// API test passes. Skipped where glibc's static library is not installed.
#[test]
fn c_api_fully_static_link() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let libc_a = Command::new(&gcc)
        .arg("-print-file-name=libc.a")
        .output()
        .expect("gcc -print-file-name");
    let libc_a = PathBuf::from(String::from_utf8_lossy(&libc_a.stdout).trim());
    if !libc_a.is_absolute() || !libc_a.exists() {
        mmp_tests::skip("no static glibc (libc.a): fully static link not tested");
        return;
    }
    let src = repo().join("tests").join("c").join("api.c");
    // glibc's linker warnings that getaddrinfo and getpwuid_r need its shared libraries at
    // run time do not fail the link (libmmp never calls them; they come with the Rust
    // standard library).
    let bin = link_with(
        &gcc,
        &pkg,
        &src,
        "api-fully-static",
        &["-static"],
        &["--cflags", "--static", "--libs", "mmp"],
    );
    if let Some(needed) = needed_libs(&bin) {
        assert!(needed.is_empty(), "not fully static:\n{needed}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = image(dir.path());
    run_c(
        api_cmd(&bin, &dev, &scratch(dir.path()), 300),
        "api (fully static)",
    );
}

/// `libmmp.a` defines exactly the API as global symbols, the same set `libmmp.so` exports:
/// no Rust runtime symbol that another Rust static library in the same program would also
/// define. Proven by linking a program that defines `rust_eh_personality` itself, which
/// every Rust static library defines (linking it with the unstripped archive cargo builds
/// fails, checked here, so this test cannot pass by accident).
#[test]
fn c_api_static_library_exports_only_the_api() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let Some(nm) = mmp_tests::find_tool("nm") else {
        mmp_tests::skip("nm not found");
        return;
    };
    let lib = prefix().join("lib");
    let globals = |args: &[&str], file: &Path| -> Vec<String> {
        let out = Command::new(&nm).args(args).arg(file).output().expect("nm");
        assert!(out.status.success(), "nm {}", file.display());
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| f[2].to_string())
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let in_a = globals(&["-g", "--defined-only"], &lib.join("libmmp.a"));
    let in_so = globals(&["-D", "--defined-only"], &lib.join("libmmp.so"));
    assert!(in_a.len() >= 30, "libmmp.a defines only {in_a:?}");
    assert_eq!(
        in_a, in_so,
        "libmmp.a and libmmp.so differ in their global symbols"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("clash.c");
    std::fs::write(
        &src,
        "#include <mmp.h>\n#include <stdio.h>\n\
         /* As another Rust static library in the program would define it. */\n\
         void rust_eh_personality(void);\nvoid rust_eh_personality(void) {}\n\
         int main(void) { printf(\"%s all passed\\n\", mmp_version()); return 0; }\n",
    )
    .expect("write clash.c");
    // The archive cargo builds clashes: the symbol is a real one to test with.
    let raw = Command::new(&gcc)
        .arg("-I")
        .arg(prefix().join("include"))
        .arg(&src)
        .arg(target_dir().join("release").join("libmmp.a"))
        .args(["-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc", "-o"])
        .arg(dir.path().join("clash-raw"))
        .output()
        .expect("run gcc");
    assert!(
        !raw.status.success()
            && String::from_utf8_lossy(&raw.stderr).contains("rust_eh_personality"),
        "cargo's own libmmp.a no longer clashes on rust_eh_personality: pick another symbol"
    );
    let bin = link_with(
        &gcc,
        &pkg,
        &src,
        "static-clash",
        &[],
        &["--cflags", "--libs", "mmp-static"],
    );
    run_c(
        Command::new(bin),
        "a program defining a Rust runtime symbol, with libmmp.a",
    );
}

/// The shared library carries the soname `libmmp.so.0.MINOR` (0.x: the minor is the ABI),
/// and the install created the links.
#[test]
fn c_api_soname_and_install_layout() {
    let Some(_) = c_tools() else { return };
    let lib = prefix().join("lib");
    let (version, ..) = cargo_version();
    let minor = version.split('.').nth(1).expect("a minor version");
    assert!(version.starts_with("0."), "update the soname rule for 1.0");
    let soname = format!("libmmp.so.0.{minor}");
    for name in [
        format!("libmmp.so.{version}"),
        soname.clone(),
        "libmmp.so".into(),
        "libmmp.a".into(),
        "pkgconfig/mmp.pc".into(),
        "pkgconfig/mmp-static.pc".into(),
    ] {
        assert!(lib.join(&name).exists(), "{name} not installed");
    }
    assert!(prefix().join("include").join("mmp.h").exists());
    assert_eq!(
        std::fs::read_link(lib.join(&soname)).expect("the soname is a link"),
        PathBuf::from(format!("libmmp.so.{version}"))
    );
    let Some(readelf) = mmp_tests::find_tool("readelf") else {
        mmp_tests::skip("readelf not found: soname not checked");
        return;
    };
    let out = Command::new(readelf)
        .arg("-d")
        .arg(lib.join("libmmp.so"))
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Library soname: [{soname}]")),
        "soname:\n{text}"
    );
}

/// The committed header compiles on its own as strict C11 and as C++17.
#[test]
fn header_compiles_as_c11_and_cpp17() {
    let header = repo().join("include").join("mmp.h");
    if let Some(gcc) = mmp_tests::find_tool("gcc") {
        let out = Command::new(gcc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror"])
            .args(["-fsyntax-only", "-x", "c"])
            .arg(&header)
            .output()
            .expect("gcc");
        assert!(
            out.status.success(),
            "C11:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        mmp_tests::skip("gcc not found: C11 compile of the header skipped");
    }
    let Some(gxx) = mmp_tests::find_tool("g++") else {
        mmp_tests::skip("g++ not found: C++ compile of the header skipped");
        return;
    };
    let out = Command::new(gxx)
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-x",
            "c++",
            "-fsyntax-only",
        ])
        .arg(&header)
        .output()
        .expect("g++");
    assert!(
        out.status.success(),
        "C++17:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And used from C++: enums, structs and calls.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("use.cpp");
    std::fs::write(
        &src,
        "#include <mmp.h>\n\
         int main() {\n\
           mmp_status st{};\n\
           mmp_device *d = nullptr;\n\
           mmp_result r = mmp_device_open(\"/nonexistent\", nullptr, MMP_OPEN_READ_ONLY, &d);\n\
           static_assert(sizeof(mmp_result) == 4, \"uint32_t\");\n\
           return (r == MMP_RESULT_OK) + st.owned + (mmp_result_str(r) == nullptr);\n\
         }\n",
    )
    .expect("write use.cpp");
    let gxx = mmp_tests::find_tool("g++").expect("g++");
    let out = Command::new(gxx)
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(repo().join("include"))
        .arg(&src)
        .output()
        .expect("g++");
    assert!(
        out.status.success(),
        "C++ use:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// The boundary, driven from Rust through the same exported functions.

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

unsafe extern "C" fn count_loss(userdata: *mut c_void, _info: *const mmp::mmp_loss_info) {
    // SAFETY: the test passes a pointer to an `AtomicUsize` that outlives the heartbeat.
    let n = unsafe { &*userdata.cast::<std::sync::atomic::AtomicUsize>() };
    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// A panic inside a call is caught, returns `MMP_RESULT_PANIC` and poisons the handle:
/// every later call returns `MMP_RESULT_POISONED`, the heartbeat stops at once without
/// writing CLEAN (the node must assume it no longer owns the device), and free works.
#[test]
fn ffi_panic_poisons_the_handle() {
    use mmp::mmp_result as R;
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = c_path(&image(dir.path()));
    let node = c"rust-node";
    let id = mmp::mmp_identity {
        hostid: 0x7777,
        nodename: node.as_ptr(),
        default_hostid: false,
    };
    let losses = std::sync::atomic::AtomicUsize::new(0);
    // SAFETY: every pointer is a live C string, identity, out-parameter or counter for the
    // duration of the calls; the handles are freed once, after their last use.
    unsafe {
        assert_eq!(mmp::mmp_native_format(dev.as_ptr(), 100, 10, true), R::Ok);
        let mut d = std::ptr::null_mut();
        assert_eq!(mmp::mmp_device_open(dev.as_ptr(), &id, 0, &mut d), R::Ok);
        let mut ro = std::ptr::null_mut();
        assert_eq!(
            mmp::mmp_device_open(dev.as_ptr(), &id, mmp::MMP_OPEN_READ_ONLY, &mut ro),
            R::Ok
        );
        assert_eq!(
            mmp::mmp_device_acquire(d, false, None, std::ptr::null_mut()),
            R::Ok
        );
        let counter = (&raw const losses).cast_mut().cast::<c_void>();
        assert_eq!(
            mmp::mmp_device_start_heartbeat(d, Some(count_loss), counter),
            R::Ok
        );
        std::thread::sleep(std::time::Duration::from_millis(300));

        assert_eq!(mmp::api::panic_in_call_for_tests(d), R::Panic);
        let mut st = std::mem::MaybeUninit::<mmp::mmp_status>::uninit();
        assert_eq!(mmp::mmp_device_status(d, st.as_mut_ptr()), R::Poisoned);
        assert_eq!(mmp::mmp_device_release(d), R::Poisoned);
        assert_eq!(
            mmp::mmp_device_acquire(d, true, None, std::ptr::null_mut()),
            R::Poisoned
        );
        assert_eq!(mmp::mmp_device_cancel(d), R::Poisoned);
        assert_eq!(mmp::mmp_device_clear(d), R::Poisoned);
        assert_eq!(mmp::api::panic_in_call_for_tests(d), R::Poisoned);

        // The heartbeat stopped without CLEAN: the block stays ACTIVE and frozen.
        assert_eq!(mmp::mmp_device_status(ro, st.as_mut_ptr()), R::Ok);
        let first = st.assume_init();
        assert_eq!(first.state, mmp::mmp_state::Active);
        assert_eq!(first.hostid, 0x7777);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(mmp::mmp_device_status(ro, st.as_mut_ptr()), R::Ok);
        assert_eq!(st.assume_init().seq, first.seq);
        mmp::mmp_device_free(d);
        assert_eq!(mmp::mmp_device_status(ro, st.as_mut_ptr()), R::Ok);
        assert_eq!(st.assume_init().state, mmp::mmp_state::Active);
        mmp::mmp_device_free(ro);
    }
    assert_eq!(losses.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Unknown result values map to the invalid-parameter text; every known one has its own.
#[test]
fn ffi_result_str() {
    let text = |v: u32| {
        // SAFETY: `mmp_result_str` returns a static NUL-terminated string, never NULL.
        unsafe { CStr::from_ptr(mmp::mmp_result_str(v)) }
            .to_str()
            .expect("ASCII")
            .to_string()
    };
    let invalid = text(mmp::mmp_result::InvalidParameter as u32);
    for v in [15, 99, 150, 199, 201, 1000, u32::MAX] {
        assert_eq!(text(v), invalid, "{v}");
    }
    let mut seen = std::collections::HashSet::new();
    for r in mmp::result::ALL {
        assert!(seen.insert(text(*r as u32)), "{r:?} shares its text");
    }
}

// ---------------------------------------------------------------------------------------
// The example mount helper.

/// `examples/mount-helper.c` builds warning-free against the installed library.
#[test]
fn c_mount_helper_compiles() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let src = repo().join("examples").join("mount-helper.c");
    let bin = compile(&gcc, &pkg, &src, "mount-helper", &[]);
    let out = Command::new(&bin)
        .arg("-h")
        .output()
        .expect("run mount-helper -h");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: mount-helper"));
}

/// The helper's exit codes match the `mmp` command's: a missing hostid and a corrupt block
/// are errors (2), another host's live hold is a refusal (1), reported with its owner from
/// `mmp_device_last_error`. No mount is reached, so no root is needed.
#[test]
fn c_mount_helper_exit_codes() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let bin = compile(
        &gcc,
        &pkg,
        &repo().join("examples").join("mount-helper.c"),
        "mount-helper-codes",
        SANITIZE,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let dev = c_path(&img);
    // SAFETY: a live C string.
    let r = unsafe { mmp::mmp_native_format(dev.as_ptr(), 100, 10, true) };
    assert_eq!(r, mmp::mmp_result::Ok);
    let run = |hostid: &str| {
        let out = Command::new(&bin)
            .arg("-m")
            .arg(&img)
            .arg(&img)
            .arg(&mnt)
            .env("MMP_HOSTID", hostid)
            .output()
            .expect("run mount-helper");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (code, err) = run("0");
    assert_eq!(code, Some(2), "no hostid: {err}");
    assert!(err.contains("hostid"), "{err}");

    // Another host holds the device and heartbeats: refused, with the owner named.
    let id = mmp::mmp_identity {
        hostid: 0x777,
        nodename: c"holder".as_ptr(),
        default_hostid: false,
    };
    // SAFETY: live C strings and out-parameters; the handle is freed once.
    unsafe {
        let mut d = std::ptr::null_mut();
        assert_eq!(
            mmp::mmp_device_open(dev.as_ptr(), &id, 0, &mut d),
            mmp::mmp_result::Ok
        );
        assert_eq!(
            mmp::mmp_device_acquire(d, false, None, std::ptr::null_mut()),
            mmp::mmp_result::Ok
        );
        assert_eq!(
            mmp::mmp_device_start_heartbeat(d, None, std::ptr::null_mut()),
            mmp::mmp_result::Ok
        );
        let (code, err) = run("0xabc");
        assert_eq!(code, Some(1), "held elsewhere: {err}");
        assert!(err.contains("held by holder, hostid 00000777"), "{err}");
        assert_eq!(mmp::mmp_device_release(d), mmp::mmp_result::Ok);
        mmp::mmp_device_free(d);
    }

    // SIGTERM while the claim is being verified (a clean but never-held block: over a
    // second): the handler cancels the started acquire, which ends ABORTED (exit 2) instead
    // of going on to mount, and the block is put back exactly as it was.
    let before = read_status(&img);
    let mut child = Command::new(&bin)
        .arg("-m")
        .arg(&img)
        .arg(&img)
        .arg(&mnt)
        .env("MMP_HOSTID", "0xabc")
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mount-helper");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let code = wait_exit(&mut child, 10);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert_eq!(code.code(), Some(2), "SIGTERM while claiming: {err}");
    assert!(
        err.contains("verifying nobody else claims") && err.contains("cancelled"),
        "{err}"
    );
    assert!(!err.contains("mount failed"), "{err}");
    let after = read_status(&img);
    assert_eq!(after.state, mmp::mmp_state::Clean);
    assert_eq!((after.seq, after.time_ms), (before.seq, before.time_ms));

    // A corrupt block: error, as `mmp` says.
    let mut raw = std::fs::read(&img).expect("read image");
    raw[0x30] ^= 0xff;
    std::fs::write(&img, &raw).expect("write image");
    let (code, err) = run("0xabc");
    assert_eq!(code, Some(2), "corrupt: {err}");
    assert!(err.contains("corrupt"), "{err}");
}

fn mounted(dir: &Path) -> bool {
    let canon = std::fs::canonicalize(dir).expect("canonicalize");
    let want = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn read_status(dev: &Path) -> mmp::mmp_status {
    let path = c_path(dev);
    let id = mmp::mmp_identity {
        hostid: 1,
        nodename: c"observer".as_ptr(),
        default_hostid: false,
    };
    // SAFETY: live C strings, identity and out-parameters; the handle is freed once.
    unsafe {
        let mut d = std::ptr::null_mut();
        assert_eq!(
            mmp::mmp_device_open(path.as_ptr(), &id, mmp::MMP_OPEN_READ_ONLY, &mut d),
            mmp::mmp_result::Ok
        );
        let mut st = std::mem::MaybeUninit::<mmp::mmp_status>::uninit();
        let r = mmp::mmp_device_status(d, st.as_mut_ptr());
        mmp::mmp_device_free(d);
        assert_eq!(r, mmp::mmp_result::Ok);
        st.assume_init()
    }
}

/// Starts the helper and waits for its `mounted` line.
fn start_helper(bin: &Path, mmp_dev: &Path, data: &Path, mnt: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .arg("-m")
        .arg(mmp_dev)
        .arg(data)
        .arg(mnt)
        .env("MMP_HOSTID", "0xabc")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start mount-helper");
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    reader.read_line(&mut line).expect("read helper output");
    assert!(line.starts_with("mounted "), "helper said {line:?}");
    child.stdout = None;
    std::thread::spawn(move || {
        let mut rest = String::new();
        while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {}
    });
    child
}

fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("program did not exit within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// As root with loop devices: the helper acquires a native MMP area, mounts an ext4 data
/// device, heartbeats while mounted, and releases once the mount point is unmounted; a
/// second run is stopped with SIGTERM, unmounts and releases.
#[test]
fn loop_mount_helper_native() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let Some(mkfs) = mmp_tests::find_tool("mke2fs") else {
        mmp_tests::skip("mke2fs not found");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data_img = dir.path().join("data.img");
    std::fs::write(&data_img, vec![0u8; 16 << 20]).expect("data image");
    let st = Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4"])
        .arg(&data_img)
        .status()
        .expect("mke2fs");
    assert!(st.success());
    let mmp_img = image(dir.path());
    let Some(data) = mmp_tests::Loop::attach(&data_img) else {
        return;
    };
    let Some(mmp_lo) = mmp_tests::Loop::attach(&mmp_img) else {
        return;
    };
    let mmp_dev = c_path(&mmp_lo.dev);
    // SAFETY: a live C string.
    let r = unsafe { mmp::mmp_native_format(mmp_dev.as_ptr(), 100, 10, true) };
    assert_eq!(r, mmp::mmp_result::Ok);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let bin = compile(
        &gcc,
        &pkg,
        &repo().join("examples").join("mount-helper.c"),
        "mount-helper-loop",
        &[],
    );

    // Unmounted by someone else: the helper notices and releases.
    let mut child = start_helper(&bin, &mmp_lo.dev, &data.dev, &mnt);
    assert!(mounted(&mnt));
    let s1 = read_status(&mmp_lo.dev);
    assert_eq!(s1.state, mmp::mmp_state::Active);
    assert_eq!(s1.hostid, 0xabc);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_ne!(read_status(&mmp_lo.dev).seq, s1.seq, "heartbeat running");
    let st = Command::new("umount").arg(&mnt).status().expect("umount");
    assert!(st.success());
    let code = wait_exit(&mut child, 10);
    assert!(code.success(), "helper exit {code}");
    assert_eq!(read_status(&mmp_lo.dev).state, mmp::mmp_state::Clean);

    // SIGTERM: the helper unmounts, then releases.
    let mut child = start_helper(&bin, &mmp_lo.dev, &data.dev, &mnt);
    assert!(mounted(&mnt));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let code = wait_exit(&mut child, 10);
    assert!(code.success(), "helper exit {code}");
    assert!(!mounted(&mnt));
    assert_eq!(read_status(&mmp_lo.dev).state, mmp::mmp_state::Clean);
}

/// `examples/event-loop.c`, built (ASan+UBSan) and run on two native image files: it holds
/// both from one thread polling libmmp's event descriptors; a foreign write to one (another
/// host's clear) makes it report the loss and exit 3 while it releases the other cleanly;
/// a second run ends on SIGTERM with both released (exit 0).
#[test]
fn c_event_loop_example() {
    use std::io::BufRead;
    let Some((gcc, pkg)) = c_tools() else { return };
    let src = repo().join("examples").join("event-loop.c");
    let bin = compile(&gcc, &pkg, &src, "event-loop", SANITIZE);
    let dir = tempfile::tempdir().expect("tempdir");
    let devs: Vec<PathBuf> = ["one.img", "two.img"]
        .iter()
        .map(|n| {
            let p = dir.path().join(n);
            std::fs::write(&p, vec![0u8; 1 << 20]).expect("image");
            let c = c_path(&p);
            // SAFETY: a live C string.
            let r = unsafe { mmp::mmp_native_format(c.as_ptr(), 100, 10, true) };
            assert_eq!(r, mmp::mmp_result::Ok);
            p
        })
        .collect();
    let start = || {
        let mut child = Command::new(&bin)
            .args(&devs)
            .env("MMP_HOSTID", "0xabc")
            .env("ASAN_OPTIONS", "detect_leaks=1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start event-loop");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "held 2 device(s)");
        (child, out)
    };

    // A foreign write to the second device: reported through the fd, exit 3.
    let (mut child, mut out) = start();
    assert_eq!(read_status(&devs[1]).hostid, 0xabc);
    let path = c_path(&devs[1]);
    let id = mmp::mmp_identity {
        hostid: 0x777,
        nodename: c"other".as_ptr(),
        default_hostid: false,
    };
    // SAFETY: live C strings and out-parameters; the handle is freed once.
    unsafe {
        let mut d = std::ptr::null_mut();
        assert_eq!(
            mmp::mmp_device_open(path.as_ptr(), &id, 0, &mut d),
            mmp::mmp_result::Ok
        );
        assert_eq!(mmp::mmp_device_clear(d), mmp::mmp_result::Ok);
        mmp::mmp_device_free(d);
    }
    let code = wait_exit(&mut child, 10);
    let mut rest = String::new();
    while out.read_line(&mut rest).is_ok_and(|n| n > 0) {}
    assert!(rest.contains("lost "), "event-loop said {rest:?}");
    assert_eq!(code.code(), Some(3), "event-loop exit {code}");
    assert_eq!(read_status(&devs[0]).state, mmp::mmp_state::Clean);

    // SIGTERM: both released, exit 0.
    let (mut child, mut out) = start();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let code = wait_exit(&mut child, 10);
    let mut rest = String::new();
    while out.read_line(&mut rest).is_ok_and(|n| n > 0) {}
    assert!(code.success(), "event-loop exit {code}: {rest}");
    assert!(
        rest.contains("released 2 device(s)"),
        "event-loop said {rest:?}"
    );
    for d in &devs {
        assert_eq!(read_status(d).state, mmp::mmp_state::Clean);
    }

    // All or nothing: the second device is held by another host (a handle of this test):
    // refused at once (FOREIGN, exit 1) while the first device's claim is being verified;
    // the example gives the first up, which restores its block: nothing stays claimed.
    let path = c_path(&devs[1]);
    let id = mmp::mmp_identity {
        hostid: 0x777,
        nodename: c"other".as_ptr(),
        default_hostid: false,
    };
    let mut holder = std::ptr::null_mut();
    // SAFETY: live C strings and out-parameters; the handle is freed once, below.
    unsafe {
        assert_eq!(
            mmp::mmp_device_open(path.as_ptr(), &id, 0, &mut holder),
            mmp::mmp_result::Ok
        );
        assert_eq!(
            mmp::mmp_device_acquire(holder, false, None, std::ptr::null_mut()),
            mmp::mmp_result::Ok
        );
        assert_eq!(
            mmp::mmp_device_start_heartbeat(holder, None, std::ptr::null_mut()),
            mmp::mmp_result::Ok
        );
    }
    let before = read_status(&devs[0]);
    let mut child = Command::new(&bin)
        .args(&devs)
        .env("MMP_HOSTID", "0xabc")
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start event-loop");
    let code = wait_exit(&mut child, 10);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert_eq!(code.code(), Some(1), "event-loop exit {code}: {err}");
    assert!(
        err.contains("held by other") && err.contains("giving up every device"),
        "event-loop said {err:?}"
    );
    let first = read_status(&devs[0]);
    assert_eq!(first.state, mmp::mmp_state::Clean);
    // The very block found before (a restored claim is written back as it was).
    assert_eq!(first.seq, before.seq);
    assert_eq!(first.time_ms, before.time_ms);
    let second = read_status(&devs[1]);
    assert_eq!(second.state, mmp::mmp_state::Active);
    assert_eq!(second.hostid, 0x777);
    // SAFETY: the live handle from above, freed once.
    unsafe {
        assert_eq!(mmp::mmp_device_release(holder), mmp::mmp_result::Ok);
        mmp::mmp_device_free(holder);
    }
}

/// `tests/c/ext4.c` (ASan+UBSan): enable, set-interval and disable on an ext4 image made by
/// mke2fs.
#[test]
fn tool_c_api_ext4() {
    let Some((gcc, pkg)) = c_tools() else { return };
    let Some(mkfs) = mmp_tests::find_tool("mke2fs") else {
        mmp_tests::skip("mke2fs not found");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("fs.img");
    std::fs::write(&img, vec![0u8; 16 << 20]).expect("image");
    let st = Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
        .arg(&img)
        .status()
        .expect("mke2fs");
    assert!(st.success());
    let src = repo().join("tests").join("c").join("ext4.c");
    let bin = compile(&gcc, &pkg, &src, "ext4-asan", SANITIZE);
    let mut cmd = Command::new(bin);
    cmd.arg(&img);
    run_c(cmd, "ext4 (ASan+UBSan)");
}
