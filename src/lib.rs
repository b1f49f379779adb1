pub mod core;
pub mod pb {
    tonic::include_proto!("l2d.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("l2d_descriptor");
}
pub mod pool_file;
pub mod squad;
