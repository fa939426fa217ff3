//! Gives the shared library its soname. While the crate is at 0.x the ABI may change with
//! every minor version (docs/c-api.md, "ABI"), so the soname carries the minor:
//! `libmmp.so.0.MINOR` (a program linked against 0.1 never loads 0.2 by accident); from 1.0
//! on it is `libmmp.so.MAJOR`. `scripts/install-libmmp` installs the matching symlink.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_else(|_| "0".into());
    let soname = if major == "0" {
        format!("libmmp.so.0.{minor}")
    } else {
        format!("libmmp.so.{major}")
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    println!("cargo:rerun-if-changed=build.rs");
}
