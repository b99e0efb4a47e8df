fn main() {
    // The libxml helpers and body processors call into libxml2.
    println!("cargo:rustc-link-lib=xml2");
}
