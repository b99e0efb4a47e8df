//! Build script of the pua cdylib: compiles the C shim (include/pua_shim.c)
//! with the Debian core's -D set that pua-sys derived, and links what the C
//! pua.so links (libsrdb1 with its rpath, libxml2). Core symbols stay
//! undefined and resolve against the kamailio binary when it loads us.

use std::env;

fn main() {
    let inc = env::var("DEP_KAMAILIO_HEADERS_INCLUDE").expect("pua-sys include path");
    let flags = env::var("DEP_KAMAILIO_HEADERS_CFLAGS").expect("pua-sys cflags");
    println!("cargo:rerun-if-changed=include/pua_shim.c");
    println!("cargo:rerun-if-changed=include/pua_shim.h");

    let mut b = cc::Build::new();
    b.file("include/pua_shim.c")
        .include(&inc)
        .include("include")
        .warnings(false);
    for f in flags.split('\x1f') {
        if let Some(d) = f.strip_prefix("-D") {
            match d.split_once('=') {
                Some((k, v)) => b.define(k, Some(v)),
                None => b.define(d, None),
            };
        } else if let Some(i) = f.strip_prefix("-I") {
            b.include(i);
        }
    }
    b.compile("pua_shim");

    let kdir = "/usr/lib/x86_64-linux-gnu/kamailio";
    println!("cargo:rustc-link-search=native={kdir}");
    println!("cargo:rustc-link-lib=dylib=srdb1");
    println!("cargo:rustc-link-lib=dylib=xml2");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,{kdir}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,pua.so");
}
