//! Data-parallel collectives: what the ranks of one training run exchange every step.
//!
//! [`Collective`] is the interface the trainer uses; [`SingleProcess`] is the one-rank case and [`TcpCollective`]
//! runs over the TCP connections of the launch's rendezvous (a star around rank 0), so data-parallel training
//! works with any number of processes on any device. Reductions sum in rank order on rank 0 and send that one
//! result back, so every rank holds bit-identical values and the replicated optimizer steps stay identical.

use crate::error::{Result, TrainError};
use std::io::{Read, Write};
use std::net::TcpStream;

/// Element-wise sums over the ranks of a run.
pub trait Collective {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces `buf` on every rank with the element-wise sum of every rank's `buf` (same length everywhere).
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// The same for f64 values (loss sums and token counts).
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()>;
}

/// One rank: the sums are the values themselves.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&mut self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// Values per message of [`TcpCollective::all_reduce_sum`] (4 MiB of f32).
const PIECE: usize = 1 << 20;

/// Rank 0 holds a connection to every other rank; every other rank holds its connection to rank 0.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: the connections to ranks 1, 2, ... in order. Other ranks: the connection to rank 0.
    links: Vec<TcpStream>,
}

impl TcpCollective {
    /// `links` as the rendezvous leaves them: on rank 0 the streams of ranks 1..world in rank order, on any
    /// other rank the one stream to rank 0.
    pub fn new(rank: usize, world: usize, links: Vec<TcpStream>) -> Result<Self> {
        let want = if rank == 0 { world - 1 } else { 1 };
        if world == 0 || rank >= world || links.len() != want {
            return Err(TrainError::Invalid(format!(
                "data-parallel group: rank {rank} of {world} needs {want} connection(s), got {}",
                links.len()
            )));
        }
        for s in &links {
            // A step can take minutes; a rank that dies closes its socket, which ends the wait with an error.
            s.set_read_timeout(None).map_err(net)?;
            s.set_nodelay(true).map_err(net)?;
        }
        Ok(TcpCollective { rank, world, links })
    }

    /// Sum of `N`-byte little-endian values in rank order; `add` folds a peer's bytes into `acc`.
    fn reduce_bytes(&mut self, bytes: &mut [u8], add: impl Fn(&mut [u8], &[u8])) -> Result<()> {
        let n = bytes.len() as u64;
        if self.rank != 0 {
            let s = &mut self.links[0];
            s.write_all(&n.to_le_bytes()).map_err(net)?;
            s.write_all(bytes).map_err(net)?;
            return s.read_exact(bytes).map_err(net);
        }
        let mut peer = vec![0u8; bytes.len()];
        for (i, s) in self.links.iter_mut().enumerate() {
            let mut len = [0u8; 8];
            s.read_exact(&mut len).map_err(net)?;
            if u64::from_le_bytes(len) != n {
                return Err(TrainError::Invalid(format!(
                    "data-parallel rank {} sent {} bytes where rank 0 has {n}: the ranks run different models",
                    i + 1,
                    u64::from_le_bytes(len)
                )));
            }
            s.read_exact(&mut peer).map_err(net)?;
            add(bytes, &peer);
        }
        for s in &mut self.links {
            s.write_all(bytes).map_err(net)?;
        }
        Ok(())
    }
}

fn net(e: std::io::Error) -> TrainError {
    TrainError::Invalid(format!(
        "data-parallel exchange failed: {e} (did another rank stop?)"
    ))
}

macro_rules! add_le {
    ($t:ty) => {
        |acc: &mut [u8], peer: &[u8]| {
            const W: usize = std::mem::size_of::<$t>();
            for (a, p) in acc.chunks_exact_mut(W).zip(peer.chunks_exact(W)) {
                let v = <$t>::from_le_bytes(a[..].try_into().unwrap_or([0; W]))
                    + <$t>::from_le_bytes(p.try_into().unwrap_or([0; W]));
                a.copy_from_slice(&v.to_le_bytes());
            }
        }
    };
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        // In pieces, so the wire copy stays small whatever the tensor's size.
        for piece in buf.chunks_mut(PIECE) {
            let mut bytes: Vec<u8> = piece.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.reduce_bytes(&mut bytes, add_le!(f32))?;
            for (v, b) in piece.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let mut bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.reduce_bytes(&mut bytes, add_le!(f64))?;
        for (v, b) in buf.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *v = f64::from_le_bytes(a);
        }
        Ok(())
    }
}

/// A connected group of `world` ranks on loopback, for tests: element `r` is rank `r`'s collective.
pub fn loopback_group(world: usize) -> Result<Vec<TcpCollective>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(net)?;
    let addr = listener.local_addr().map_err(net)?;
    let mut root_links = Vec::new();
    let mut others = Vec::new();
    for r in 1..world {
        let client = TcpStream::connect(addr).map_err(net)?;
        let (server, _) = listener.accept().map_err(net)?;
        root_links.push(server);
        others.push(TcpCollective::new(r, world, vec![client])?);
    }
    let mut all = vec![TcpCollective::new(0, world, root_links)?];
    all.extend(others);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_the_same_rank_order_sum() {
        let world = 3;
        let group = loopback_group(world).unwrap();
        let results: Vec<(Vec<f32>, Vec<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|mut c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        // values whose f32 sum depends on the order: 1e8 + 1 - 1e8
                        let mut v = vec![r + 1.0, 10.0 * r, [1e8, 1.0, -1e8][c.rank()]];
                        c.all_reduce_sum(&mut v).unwrap();
                        let mut d = vec![c.rank() as f64 * 0.5, 1.0];
                        c.all_reduce_sum_f64(&mut d).unwrap();
                        (v, d)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let want = [6.0f32, 30.0, (1e8f32 + 1.0) - 1e8];
        for (v, d) in &results {
            assert_eq!(v.as_slice(), want.as_slice());
            assert_eq!(d.as_slice(), [1.5, 3.0].as_slice());
        }
    }

    #[test]
    fn buffers_longer_than_one_message_are_summed_whole() {
        let n = 2 * PIECE + 3;
        let group = loopback_group(2).unwrap();
        let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|mut c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let mut v: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 + r).collect();
                        c.all_reduce_sum(&mut v).unwrap();
                        v
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for v in &sums {
            assert!(v
                .iter()
                .enumerate()
                .all(|(i, &x)| x == 2.0 * (i % 1000) as f32 + 1.0));
        }
    }

    #[test]
    fn mismatched_lengths_and_lost_ranks_are_errors() {
        let mut group = loopback_group(2).unwrap();
        let mut one = group.pop().unwrap();
        let mut root = group.pop().unwrap();
        let t = std::thread::spawn(move || {
            let mut v = vec![1.0f32; 3];
            one.all_reduce_sum(&mut v)
        });
        let mut v = vec![1.0f32; 4];
        let e = root.all_reduce_sum(&mut v).unwrap_err().to_string();
        assert!(
            e.contains("rank 1 sent 12 bytes where rank 0 has 16"),
            "{e}"
        );
        drop(root);
        assert!(t.join().unwrap().is_err(), "rank 1 sees rank 0 go away");
    }
}
