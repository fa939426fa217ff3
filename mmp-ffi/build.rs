//! Gives the shared library its soname, `libmmp.so.0`: programs linked against it record
//! that name, and `scripts/install-libmmp` installs the matching symlink.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmmp.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
