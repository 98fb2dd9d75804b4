//! One module per subcommand (`bench_*`: one per measurement), and [`args`] for the flags they share.

pub mod args;
pub mod bench;
pub mod bench_forward;
pub mod bench_generate;
pub mod bench_serve;
pub mod bench_ssd;
pub mod bench_train;
pub mod data;
pub mod generate;
pub mod logits;
pub mod recipe;
pub mod run;
pub mod serve;
