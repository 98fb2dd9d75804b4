//! The collectives training uses, from `coil-comm`: data-parallel gradient sums, and the groups of a run split
//! over tensor and data parallelism.

pub use coil_comm::{
    loopback_group, loopback_layout, Collective, CommError, Layout, SingleProcess, TcpCollective,
};
