//! shoal's dataplane: the deterministic filter every cluster host runs on
//! every frame it sees. Sans-IO: bytes and time in, verdicts out.
#![forbid(unsafe_code)]

pub mod answer_limit;
pub mod array;
pub mod bucket;
pub mod descriptor;
pub mod fastpath;
pub mod hash;
pub mod instances;
pub mod mac;
pub mod map;
pub mod model;
pub mod packet;
pub mod pcap;
pub mod pipeline;
pub mod reply;
pub mod sim;
pub mod wire;

pub use model::*;
