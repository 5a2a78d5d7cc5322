//! Compiles the gRPC contract. Uses `$PROTOC` when set, else the vendored protoc
//! so a fresh machine needs nothing installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // Edition 2024 makes set_var unsafe; build scripts run before any thread is spawned.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc);
        }
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/portwatch/v1/portwatch.proto"], &["proto"])?;
    Ok(())
}
