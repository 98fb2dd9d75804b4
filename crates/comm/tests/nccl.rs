//! The NCCL backend on one GPU (a group of one, which is what one device can check): every collective returns
//! what it must on random buffers, through the host staging and on device buffers. Needs a GPU:
//! `cargo test --release --features cuda -p coil-comm --test nccl -- --ignored`.
#![cfg(feature = "cuda")]

use candle_core::cuda_backend::cudarc::driver::CudaContext;
use coil_comm::{Collective, NcclCollective, SingleProcess};

fn random(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed);
            (x % 20011) as f32 / 20011.0 - 0.5
        })
        .collect()
}

#[test]
#[ignore = "needs a GPU with NCCL"]
fn a_group_of_one_gpu_returns_its_own_values() {
    let ctx = CudaContext::new(0).expect("a CUDA device");
    let mut c = NcclCollective::new(&mut SingleProcess, ctx.default_stream()).expect("NCCL");
    assert_eq!((c.rank(), c.world_size()), (0, 1));
    let v = random(1 << 20, 7);
    let mut a = v.clone();
    c.all_reduce_sum(&mut a).unwrap();
    assert_eq!(a, v);
    let mut m = v.clone();
    c.all_reduce_max(&mut m).unwrap();
    assert_eq!(m, v);
    assert_eq!(c.all_gather(&v).unwrap(), v);
    assert_eq!(c.reduce_scatter_sum(&v).unwrap(), v);
    let mut b = v.clone();
    c.broadcast(&mut b, 0).unwrap();
    assert_eq!(b, v);
    assert!(c.broadcast(&mut b, 1).is_err());
    let mut d = vec![1.5f64, -2.0];
    c.all_reduce_sum_f64(&mut d).unwrap();
    assert_eq!(d, [1.5, -2.0]);
    // On device buffers.
    let s = c.stream().clone();
    let mut dev = s.clone_htod(&v).unwrap();
    c.all_reduce_sum_device(&mut dev).unwrap();
    let mut out = s.alloc_zeros::<f32>(v.len()).unwrap();
    c.all_gather_device(&dev, &mut out).unwrap();
    let back = s.clone_dtoh(&out).unwrap();
    assert_eq!(back, v);
}
