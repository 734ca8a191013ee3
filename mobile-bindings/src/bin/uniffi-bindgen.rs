//! The uniffi binding generator, pinned to this workspace's uniffi version.
fn main() {
    uniffi::uniffi_bindgen_main()
}
