//! Compiles `proto/shard.proto` into the tonic client and server of the shard service.
//! protox parses the file in Rust, so building berth needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/shard.proto");
    let fds = protox::compile(["shard.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Chunk bytes are handed between the wire and the disk without copies.
        .bytes(".berth.shard.v1.Chunk.data")
        .compile_fds(fds)?;
    Ok(())
}
