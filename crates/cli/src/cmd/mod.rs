//! One module per subcommand.

pub mod bench;
pub mod bench_generate;
pub mod bench_ssd;
pub mod bench_train;
pub mod data;
pub mod generate;
pub mod logits;
pub mod recipe;
pub mod run;
