//! Build script of pua-sys: finds the Kamailio source that matches the
//! installed Debian package (fetching it with kamailio-headers/fetch.sh when
//! missing), reads the core's -D set from it, runs bindgen over our wrapper
//! header, and compiles and runs a C probe (with the same -D set, by gcc) that
//! prints the core's version strings and the layout of every struct shared
//! with C consumers. The version strings are checked against `kamailio -v`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Structs shared with C consumers, and every field of each. The probe
/// measures them with gcc; tests compare with bindgen's layout.
const SHARED: &[(&str, &[&str])] = &[
    (
        "ua_pres_t",
        &[
            "id",
            "pres_uri",
            "event",
            "expires",
            "desired_expires",
            "flag",
            "db_flag",
            "cb_param",
            "next",
            "ua_flag",
            "outbound_proxy",
            "etag",
            "tuple_id",
            "body",
            "content_type",
            "watcher_uri",
            "call_id",
            "to_tag",
            "from_tag",
            "cseq",
            "version",
            "extra_headers",
            "record_route",
            "remote_contact",
            "contact",
        ],
    ),
    (
        "publ_info_t",
        &[
            "id",
            "pres_uri",
            "body",
            "expires",
            "flag",
            "source_flag",
            "event",
            "content_type",
            "etag",
            "outbound_proxy",
            "extra_headers",
            "cb_param",
        ],
    ),
    (
        "subs_info_t",
        &[
            "id",
            "pres_uri",
            "watcher_uri",
            "contact",
            "remote_target",
            "outbound_proxy",
            "event",
            "extra_headers",
            "expires",
            "source_flag",
            "flag",
            "cb_param",
            "internal_update_flag",
        ],
    ),
    (
        "pua_event_t",
        &["ev_flag", "name", "content_type", "process_body", "next"],
    ),
    (
        "pua_api_t",
        &[
            "send_subscribe",
            "send_publish",
            "register_puacb",
            "is_dialog",
            "get_record_id",
            "add_event",
            "get_subs_list",
        ],
    ),
    (
        "libxml_api_t",
        &[
            "xmlDocGetNodeByName",
            "xmlNodeGetNodeByName",
            "xmlNodeGetNodeContentByName",
            "xmlNodeGetAttrContentByName",
        ],
    ),
    ("list_entry_t", &["strng", "next"]),
    ("str", &["s", "len"]),
    (
        "struct module_exports",
        &[
            "name",
            "dlflags",
            "cmds",
            "params",
            "rpc_methods",
            "pv_items",
            "response_f",
            "init_mod_f",
            "init_child_f",
            "destroy_mod_f",
        ],
    ),
    (
        "cmd_export_t",
        &[
            "name",
            "function",
            "param_no",
            "fixup",
            "free_fixup",
            "flags",
        ],
    ),
    ("param_export_t", &["name", "type_", "param_pointer"]),
    ("rpc_export_t", &["name", "function", "doc_str", "flags"]),
    ("sr_kemi_t", &["mname", "fname", "rtype", "func", "ptypes"]),
    (
        "struct pua_callback",
        &["id", "types", "callback", "param", "next"],
    ),
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../..").canonicalize().unwrap();
    let kdir = env::var_os("PUA_KAMAILIO_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("kamailio-headers/src"));
    println!("cargo:rerun-if-env-changed=PUA_KAMAILIO_SRC");
    println!("cargo:rerun-if-changed={}", kdir.join(".version").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("include/pua_sys_wrapper.h").display()
    );
    println!("cargo:rerun-if-changed=build.rs");

    if !kdir.join(".pua-cflags").exists() {
        let fetch = root.join("kamailio-headers/fetch.sh");
        let st = Command::new("bash").arg(&fetch).status();
        if !matches!(st, Ok(s) if s.success()) || !kdir.join(".pua-cflags").exists() {
            panic!(
                "the Kamailio source is missing in {} and {} failed: run it as root \
                 (it needs the kamailio package installed, see kamailio-headers/README.md)",
                kdir.display(),
                fetch.display()
            );
        }
    }
    let flags: Vec<String> = fs::read_to_string(kdir.join(".pua-cflags"))
        .expect("read .pua-cflags")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let inc = kdir.join("src");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    // Hand the -D set and include path on to the crates that compile C (the shim).
    println!("cargo:include={}", inc.display());
    println!("cargo:cflags={}", flags.join("\x1f"));

    run_bindgen(&root, &inc, &flags, &out);
    let probe = run_probe(&inc, &flags, &out);
    check_installed(&probe);
    write_consts(&probe, &out);
}

fn run_bindgen(root: &Path, inc: &Path, flags: &[String], out: &Path) {
    let mut b = bindgen::Builder::default()
        .header(root.join("include/pua_sys_wrapper.h").to_string_lossy())
        .clang_arg(format!("-I{}", inc.display()))
        .clang_args(flags.iter().map(|f| f.as_str()))
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .allowlist_recursively(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for t in [
        "ua_pres_t",
        "publ_info_t",
        "subs_info_t",
        "pua_event_t",
        "pua_api_t",
        "libxml_api_t",
        "list_entry_t",
        "str",
        "module_exports",
        "cmd_export_t",
        "param_export_t",
        "rpc_export_t",
        "rpc_t",
        "sr_kemi_t",
        "pua_callback",
        "evs_process_body_t",
        "pua_cb",
        "db_func_t",
        "db1_con_t",
        "db1_res_t",
        "db_key_t",
        "db_val_t",
        "db_op_t",
        "tm_binds",
        "sip_msg",
        "hdr_field",
        "to_body",
        "contact_body",
        "contact_t",
        "gen_lock_t",
        "xmlDoc",
        "xmlNode",
        "xmlAttr",
        "xmlNs",
        "uac_req_t",
        "dlg_t",
        "tmcb_params",
        "cell",
        "timer_function",
        "db_locking_t",
        "sr_kemi_val_t",
        "db_cap_t",
    ] {
        b = b.allowlist_type(t);
    }
    for f in [
        "find_export",
        "rpc_register_array",
        "sr_kemi_modules_add",
        "register_timer",
        "db_bind_mod",
        "db_check_table_version",
        "db_fetch_query",
        "db_fetch_next",
        "parse_headers",
        "parse_from_header",
        "parse_contact",
        "get_ticks",
        "xmlNodeGetContent",
        "xmlStrcasecmp",
        "xmlFree",
        "xmlParseMemory",
        "xmlFreeDoc",
        "xmlDocGetRootElement",
        "xmlStrcmp",
        "core_hash",
        "xmlReadMemory",
        "xmlSetProp",
        "xmlDocDumpFormatMemory",
        "xmlMemGet",
        "xmlInitParser",
    ] {
        b = b.allowlist_function(f);
    }
    for v in [
        "REQUEST_ROUTE",
        "PARAM_STR",
        "PARAM_INT",
        "PARAM_STRING",
        "INT_PARAM",
        "STR_PARAM",
        "SR_KEMIP_INT",
        "SR_KEMIP_NONE",
        "SR_KEMIP_STR",
        "PROC_INIT",
        "PROC_MAIN",
        "PROC_TCP_MAIN",
        "PROC_NOCHLDINIT",
        "DB_CAP_ALL",
        "DB_CAP_.*",
        "E_BUG",
        "E_OUT_OF_MEM",
        "MODULE_INTERFACE_VER",
        "DEFAULT_DLFLAGS",
        "RET_ARRAY",
        "HDR_.*_F",
        "METHOD_NOTIFY",
        "SIP_REQUEST",
        "SIP_REPLY",
        "DB_POOLING_NONE",
        "DB_LOCKING_.*",
        "PUACB_MAX",
        "MAX_FORWARD",
        "ERR_PUBLISH_NO_BODY",
    ] {
        b = b.allowlist_var(v);
    }
    let bindings = b
        .generate()
        .expect("bindgen over the Kamailio headers failed");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}

/// What the C probe measured with gcc.
struct Probe {
    version: String,
    flags: String,
    sizes: Vec<(String, usize)>,
    offsets: Vec<(String, String, usize)>,
}

fn run_probe(inc: &Path, flags: &[String], out: &Path) -> Probe {
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"core/ver_defs.h\"\n\
         #include \"core/sr_module.h\"\n#include \"core/rpc.h\"\n#include \"core/kemi.h\"\n\
         #include \"modules/rls/list.h\"\n#include \"modules/pua/pua_bind.h\"\n\
         #include \"modules/pua/pidf.h\"\n\
         int main(void) {\n\
         printf(\"VERSION\\t%s\\n\", SER_FULL_VERSION);\n\
         printf(\"FLAGS\\t%s\\n\", SER_COMPILE_FLAGS);\n",
    );
    for (ty, fields) in SHARED {
        writeln!(c, "printf(\"SIZE\\t{ty}\\t%zu\\n\", sizeof({ty}));").unwrap();
        for f in *fields {
            // bindgen renames C's `type` to `type_`.
            let cf = f.trim_end_matches('_');
            writeln!(
                c,
                "printf(\"OFF\\t{ty}\\t{f}\\t%zu\\n\", offsetof({ty}, {cf}));"
            )
            .unwrap();
        }
    }
    c.push_str("return 0; }\n");
    let src = out.join("probe.c");
    fs::write(&src, c).unwrap();
    let exe = out.join("probe");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.arg(format!("-I{}", inc.display()));
    for f in flags {
        cmd.arg(f);
    }
    cmd.arg("-w").arg("-o").arg(&exe).arg(&src);
    let st = cmd
        .status()
        .expect("run the C compiler for the layout probe");
    assert!(
        st.success(),
        "the layout probe did not compile: {}",
        src.display()
    );
    let o = Command::new(&exe).output().expect("run the layout probe");
    assert!(o.status.success(), "the layout probe failed");
    let text = String::from_utf8(o.stdout).unwrap();
    let mut p = Probe {
        version: String::new(),
        flags: String::new(),
        sizes: vec![],
        offsets: vec![],
    };
    for line in text.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        match parts.as_slice() {
            ["VERSION", v] => p.version = v.to_string(),
            ["FLAGS", v] => p.flags = v.to_string(),
            ["SIZE", t, n] => p.sizes.push((t.to_string(), n.parse().unwrap())),
            ["OFF", t, f, n] => p
                .offsets
                .push((t.to_string(), f.to_string(), n.parse().unwrap())),
            _ => panic!("unexpected probe line {line:?}"),
        }
    }
    p
}

/// The strings we export must be the installed core's, or the loader refuses us.
fn check_installed(p: &Probe) {
    println!("cargo:rerun-if-env-changed=PUA_SKIP_KAMAILIO_CHECK");
    if env::var_os("PUA_SKIP_KAMAILIO_CHECK").is_some() {
        println!("cargo:warning=PUA_SKIP_KAMAILIO_CHECK set: not comparing with `kamailio -v`");
        return;
    }
    let bin = env::var("KAMAILIO_BIN").unwrap_or_else(|_| "/usr/sbin/kamailio".into());
    println!("cargo:rerun-if-env-changed=KAMAILIO_BIN");
    println!("cargo:rerun-if-changed={bin}");
    let o = match Command::new(&bin).arg("-v").output() {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run `{bin} -v` ({e}): pua.so must be built against an installed Kamailio \
             (kamailio-headers/install-deps.sh installs Debian's)"
        ),
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_end().to_string())
            .unwrap_or_default()
    };
    let (iv, iflags) = (field("version: "), field("flags: "));
    if iv != p.version || iflags != p.flags {
        panic!(
            "Kamailio version mismatch: the installed core ({bin}) is `{iv}` with flags `{iflags}`, \
             but the headers in kamailio-headers/src give `{}` with flags `{}`. \
             Remove kamailio-headers/src and build again to fetch the matching source.",
            p.version, p.flags
        );
    }
}

fn write_consts(p: &Probe, out: &Path) {
    let mut s = String::new();
    writeln!(
        s,
        "/// `module_version` of the core these headers belong to (NUL-terminated)."
    )
    .unwrap();
    writeln!(
        s,
        "pub const MODULE_VERSION: &[u8] = b\"{}\\0\";",
        p.version
    )
    .unwrap();
    writeln!(
        s,
        "/// `module_flags` of the core (its SER_COMPILE_FLAGS, NUL-terminated)."
    )
    .unwrap();
    writeln!(s, "pub const MODULE_FLAGS: &[u8] = b\"{}\\0\";", p.flags).unwrap();
    writeln!(
        s,
        "/// sizeof() of each shared struct, measured by gcc with the core's -D set."
    )
    .unwrap();
    writeln!(s, "pub const C_SIZES: &[(&str, usize)] = &[").unwrap();
    for (t, n) in &p.sizes {
        writeln!(s, "    ({t:?}, {n}),").unwrap();
    }
    writeln!(s, "];").unwrap();
    writeln!(
        s,
        "/// offsetof() of every field of each shared struct, measured by gcc."
    )
    .unwrap();
    writeln!(s, "pub const C_OFFSETS: &[(&str, &str, usize)] = &[").unwrap();
    for (t, f, n) in &p.offsets {
        writeln!(s, "    ({t:?}, {f:?}, {n}),").unwrap();
    }
    writeln!(s, "];").unwrap();
    // The matching Rust-side measurements, from bindgen's types.
    writeln!(
        s,
        "/// The same fields as laid out by bindgen's types: (struct, field, offset)."
    )
    .unwrap();
    writeln!(
        s,
        "pub fn rust_offsets() -> Vec<(&'static str, &'static str, usize)> {{ vec!["
    )
    .unwrap();
    for (ty, fields) in SHARED {
        let rty = rust_name(ty);
        for f in *fields {
            writeln!(s, "    ({ty:?}, {f:?}, core::mem::offset_of!({rty}, {f})),").unwrap();
        }
    }
    writeln!(s, "] }}").unwrap();
    writeln!(s, "/// sizeof each shared struct as bindgen lays it out.").unwrap();
    writeln!(
        s,
        "pub fn rust_sizes() -> Vec<(&'static str, usize)> {{ vec!["
    )
    .unwrap();
    for (ty, _) in SHARED {
        let rty = rust_name(ty);
        writeln!(s, "    ({ty:?}, core::mem::size_of::<{rty}>()),").unwrap();
    }
    writeln!(s, "] }}").unwrap();
    fs::write(out.join("consts.rs"), s).unwrap();
}

/// bindgen's name for a C type: `struct x` is `x`, and C's `str` is `str_`.
fn rust_name(c: &str) -> String {
    match c.trim_start_matches("struct ") {
        "str" => "str_".to_string(),
        other => other.to_string(),
    }
}
