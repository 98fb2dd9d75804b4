//! The TCP backend: a star around the group's rank 0, which combines every exchange in rank order and sends
//! each rank its result. Slow next to NCCL, but it runs every parallel layout on any machine, and its sums do
//! not depend on timing.

use crate::error::{CommError, Result};
use crate::layout::Layout;
use crate::Collective;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Values per message of the element-wise exchanges (4 MiB of f32), so the wire copies stay small whatever
/// the buffer's size.
const PIECE: usize = 1 << 20;

/// Rank 0 holds a connection to every other rank; every other rank holds its connection to rank 0.
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: the connections to ranks 1, 2, ... in order. Other ranks: the connection to rank 0.
    links: Vec<TcpStream>,
}

fn net(e: std::io::Error) -> CommError {
    CommError::Net(format!("exchange failed: {e} (did another rank stop?)"))
}

fn send(s: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())
        .map_err(net)?;
    s.write_all(bytes).map_err(net)
}

fn recv(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).map_err(net)?;
    let n = usize::try_from(u64::from_le_bytes(len))
        .map_err(|_| CommError::Net("a message longer than this machine can hold".into()))?;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).map_err(net)?;
    Ok(buf)
}

/// Every rank's buffer has rank 0's length, else an error naming the first rank that differs.
fn same_lengths(bufs: &[Vec<u8>]) -> Result<usize> {
    let n = bufs[0].len();
    match bufs.iter().enumerate().find(|(_, b)| b.len() != n) {
        Some((i, b)) => Err(CommError::Invalid(format!(
            "rank {i} sent {} bytes where rank 0 has {n}: the ranks run different models",
            b.len()
        ))),
        None => Ok(n),
    }
}

fn f32s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The element-wise fold of every rank's f32 buffer, in rank order.
fn fold_f32(bufs: &[Vec<u8>], f: impl Fn(f32, f32) -> f32) -> Result<Vec<u8>> {
    same_lengths(bufs)?;
    let mut acc: Vec<f32> = f32s(&bufs[0]).collect();
    for b in &bufs[1..] {
        for (a, v) in acc.iter_mut().zip(f32s(b)) {
            *a = f(*a, v);
        }
    }
    Ok(f32_bytes(&acc))
}

fn write_f32(dst: &mut [f32], b: &[u8]) {
    for (d, v) in dst.iter_mut().zip(f32s(b)) {
        *d = v;
    }
}

impl TcpCollective {
    /// `links` as the rendezvous leaves them: on rank 0 the streams of ranks 1..world in rank order, on any
    /// other rank the one stream to rank 0.
    pub fn new(rank: usize, world: usize, links: Vec<TcpStream>) -> Result<Self> {
        let want = if rank == 0 {
            world.saturating_sub(1)
        } else {
            1
        };
        if world == 0 || rank >= world || links.len() != want {
            return Err(CommError::Invalid(format!(
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

    /// One exchange: every rank hands in `mine`; rank 0 gets every rank's bytes (index = rank) and `combine`
    /// returns what each rank gets back (one entry: the same for all). Returns this rank's reply.
    fn exchange(
        &mut self,
        mine: Vec<u8>,
        combine: impl FnOnce(Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        if self.world == 1 {
            return Ok(combine(vec![mine])?.swap_remove(0));
        }
        if self.rank != 0 {
            let s = &mut self.links[0];
            send(s, &mine)?;
            return recv(s);
        }
        let mut all = vec![mine];
        for s in &mut self.links {
            all.push(recv(s)?);
        }
        let mut replies = combine(all)?;
        if replies.len() == 1 {
            for s in &mut self.links {
                send(s, &replies[0])?;
            }
            Ok(replies.swap_remove(0))
        } else {
            for (s, r) in self.links.iter_mut().zip(&replies[1..]) {
                send(s, r)?;
            }
            Ok(replies.swap_remove(0))
        }
    }

    /// An element-wise f32 exchange in pieces of [`PIECE`] values.
    fn elementwise(&mut self, buf: &mut [f32], f: impl Fn(f32, f32) -> f32 + Copy) -> Result<()> {
        for piece in buf.chunks_mut(PIECE) {
            let out = self.exchange(f32_bytes(piece), |all| Ok(vec![fold_f32(&all, f)?]))?;
            write_f32(piece, &out);
        }
        Ok(())
    }

    /// This rank's group of `groups` (a partition of the ranks, each group ascending) as a collective of its
    /// own, rank = position in the group. Every rank calls it with the same `groups`. Each rank listens on the
    /// address of its link to rank 0, the addresses travel over this group, and each new group's first member
    /// accepts the others' connections.
    pub fn split(&mut self, groups: &[Vec<usize>]) -> Result<TcpCollective> {
        let mut seen = vec![false; self.world];
        for g in groups {
            if g.is_empty() || g.windows(2).any(|w| w[0] >= w[1]) {
                return Err(CommError::Invalid(format!(
                    "group {g:?}: groups must be non-empty with ranks in ascending order"
                )));
            }
            for &r in g {
                if r >= self.world || seen[r] {
                    return Err(CommError::Invalid(format!(
                        "groups {groups:?}: rank {r} is outside 0..{} or in two groups",
                        self.world
                    )));
                }
                seen[r] = true;
            }
        }
        if let Some(r) = seen.iter().position(|s| !s) {
            return Err(CommError::Invalid(format!(
                "groups {groups:?} leave rank {r} out"
            )));
        }
        let mine = groups
            .iter()
            .find(|g| g.contains(&self.rank))
            .cloned()
            .unwrap_or_default();
        if self.world == 1 {
            return TcpCollective::new(0, 1, vec![]);
        }
        let own_ip = self.links[0].local_addr().map_err(net)?.ip();
        let listener = TcpListener::bind((own_ip, 0)).map_err(net)?;
        let port = listener.local_addr().map_err(net)?.port();
        // Rank 0 learns each rank's address (the IP it connected from, the port it listens on) and sends the
        // table to all: one "ip port" line per rank.
        let peers: Vec<IpAddr> = if self.rank == 0 {
            self.links
                .iter()
                .map(|s| s.peer_addr().map(|a| a.ip()))
                .collect::<std::io::Result<_>>()
                .map_err(net)?
        } else {
            vec![]
        };
        let table = self.exchange(port.to_le_bytes().to_vec(), |all| {
            let mut text = String::new();
            for (r, b) in all.iter().enumerate() {
                let p = u16::from_le_bytes([b[0], *b.get(1).unwrap_or(&0)]);
                let ip = if r == 0 { own_ip } else { peers[r - 1] };
                text.push_str(&format!("{ip} {p}\n"));
            }
            Ok(vec![text.into_bytes()])
        })?;
        let table: Vec<SocketAddr> = String::from_utf8_lossy(&table)
            .lines()
            .map(|l| {
                let (ip, p) = l.split_once(' ').unwrap_or((l, ""));
                Ok(SocketAddr::new(
                    ip.parse()
                        .map_err(|_| CommError::Net(format!("bad address {l:?}")))?,
                    p.parse()
                        .map_err(|_| CommError::Net(format!("bad address {l:?}")))?,
                ))
            })
            .collect::<Result<_>>()?;
        let me = mine.iter().position(|&r| r == self.rank).unwrap_or(0);
        let leader = mine[0];
        if me == 0 {
            let mut links: Vec<(usize, TcpStream)> = vec![];
            while links.len() + 1 < mine.len() {
                let (mut s, _) = listener.accept().map_err(net)?;
                let mut hello = [0u8; 8];
                s.read_exact(&mut hello).map_err(net)?;
                let r = u64::from_le_bytes(hello) as usize;
                if !mine.contains(&r) || r == self.rank || links.iter().any(|(q, _)| *q == r) {
                    return Err(CommError::Invalid(format!(
                        "group {mine:?}: unexpected connection from rank {r}"
                    )));
                }
                links.push((r, s));
            }
            links.sort_by_key(|(r, _)| *r);
            TcpCollective::new(0, mine.len(), links.into_iter().map(|(_, s)| s).collect())
        } else {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut s = loop {
                match TcpStream::connect(table[leader]) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => return Err(net(e)),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            s.write_all(&(self.rank as u64).to_le_bytes())
                .map_err(net)?;
            TcpCollective::new(me, mine.len(), vec![s])
        }
    }
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.elementwise(buf, |a, b| a + b)
    }
    fn all_reduce_max(&mut self, buf: &mut [f32]) -> Result<()> {
        self.elementwise(buf, f32::max)
    }
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let bytes: Vec<u8> = buf.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = self.exchange(bytes, |all| {
            same_lengths(&all)?;
            let mut acc = vec![0f64; all[0].len() / 8];
            for b in &all {
                for (a, c) in acc.iter_mut().zip(b.chunks_exact(8)) {
                    let mut x = [0u8; 8];
                    x.copy_from_slice(c);
                    *a += f64::from_le_bytes(x);
                }
            }
            Ok(vec![acc.iter().flat_map(|v| v.to_le_bytes()).collect()])
        })?;
        for (v, c) in buf.iter_mut().zip(out.chunks_exact(8)) {
            let mut x = [0u8; 8];
            x.copy_from_slice(c);
            *v = f64::from_le_bytes(x);
        }
        Ok(())
    }
    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        let out = self.exchange(f32_bytes(local), |all| {
            same_lengths(&all)?;
            Ok(vec![all.concat()])
        })?;
        Ok(f32s(&out).collect())
    }
    fn reduce_scatter_sum(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        let world = self.world;
        if !buf.len().is_multiple_of(world) {
            return Err(CommError::Invalid(format!(
                "reduce-scatter of {} values over {world} ranks: the length must be a multiple of the group size",
                buf.len()
            )));
        }
        let out = self.exchange(f32_bytes(buf), |all| {
            let sum = fold_f32(&all, |a, b| a + b)?;
            let part = sum.len() / world;
            Ok(sum.chunks(part.max(1)).map(<[u8]>::to_vec).collect())
        })?;
        Ok(f32s(&out).collect())
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(CommError::Invalid(format!(
                "broadcast from rank {root} in a group of {}",
                self.world
            )));
        }
        for piece in buf.chunks_mut(PIECE) {
            let out = self.exchange(f32_bytes(piece), |mut all| {
                same_lengths(&all)?;
                Ok(vec![all.swap_remove(root)])
            })?;
            write_f32(piece, &out);
        }
        Ok(())
    }
}

/// A connected group of `world` ranks on loopback, for tests: element `r` is rank `r`'s collective.
pub fn loopback_group(world: usize) -> Result<Vec<TcpCollective>> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(net)?;
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

/// The tensor- and data-parallel groups of `world` ranks at TP size `tp` on loopback, for tests: element `r`
/// is world rank `r`'s (TP group, DP group), as [`Layout`] places it.
pub fn loopback_layout(world: usize, tp: usize) -> Result<Vec<(TcpCollective, TcpCollective)>> {
    let l = Layout::new(world, tp)?;
    let mut tp_of: Vec<Option<TcpCollective>> = (0..world).map(|_| None).collect();
    let mut dp_of: Vec<Option<TcpCollective>> = (0..world).map(|_| None).collect();
    for g in l.tp_groups() {
        for (r, c) in g.into_iter().zip(loopback_group(tp)?) {
            tp_of[r] = Some(c);
        }
    }
    for g in l.dp_groups() {
        for (r, c) in g.into_iter().zip(loopback_group(l.dp)?) {
            dp_of[r] = Some(c);
        }
    }
    tp_of
        .into_iter()
        .zip(dp_of)
        .map(|(t, d)| match (t, d) {
            (Some(t), Some(d)) => Ok((t, d)),
            _ => Err(CommError::Invalid(
                "layout left a rank without a group".into(),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on every rank of `group`, one thread each; results in rank order.
    fn on_ranks<T: Send>(
        group: Vec<TcpCollective>,
        f: impl Fn(TcpCollective) -> T + Sync,
    ) -> Vec<T> {
        std::thread::scope(|s| {
            let f = &f;
            let hs: Vec<_> = group.into_iter().map(|c| s.spawn(move || f(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Values whose f32 sum depends on the order: rank r contributes [r+1, 10r, (1e8, 1, −1e8)[r % 3]].
    fn values(r: usize) -> Vec<f32> {
        vec![r as f32 + 1.0, 10.0 * r as f32, [1e8, 1.0, -1e8][r % 3]]
    }

    #[test]
    fn every_rank_gets_the_same_rank_order_sum() {
        for world in [1, 2, 3] {
            let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
                let mut v = values(c.rank());
                c.all_reduce_sum(&mut v).unwrap();
                let mut d = vec![c.rank() as f64 * 0.5, 1.0];
                c.all_reduce_sum_f64(&mut d).unwrap();
                let mut m = vec![c.rank() as f32, -(c.rank() as f32)];
                c.all_reduce_max(&mut m).unwrap();
                (v, d, m)
            });
            let mut want = values(0);
            for r in 1..world {
                for (w, v) in want.iter_mut().zip(values(r)) {
                    *w += v;
                }
            }
            let half: f64 = (0..world).map(|r| r as f64 * 0.5).sum();
            for (v, d, m) in &out {
                assert_eq!(v, &want, "world {world}");
                assert_eq!(d.as_slice(), [half, world as f64].as_slice());
                assert_eq!(m.as_slice(), [(world - 1) as f32, 0.0].as_slice());
            }
        }
    }

    #[test]
    fn gather_scatter_and_broadcast() {
        for world in [1, 2, 3] {
            let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
                let r = c.rank();
                let g = c.all_gather(&[r as f32, 0.5]).unwrap();
                // 2 values per rank; reduce-scatter must equal the slice of the all-reduce bit for bit.
                let buf: Vec<f32> = (0..2 * world)
                    .map(|i| [1e8, 1.0, -1e8][(i + r) % 3] * (r + 1) as f32)
                    .collect();
                let mine = c.reduce_scatter_sum(&buf).unwrap();
                let mut all = buf.clone();
                c.all_reduce_sum(&mut all).unwrap();
                let mut b = vec![r as f32; 3];
                c.broadcast(&mut b, world - 1).unwrap();
                (g, mine, all[2 * r..2 * r + 2].to_vec(), b)
            });
            let want: Vec<f32> = (0..world).flat_map(|r| [r as f32, 0.5]).collect();
            for (g, mine, slice, b) in &out {
                assert_eq!(g, &want);
                assert_eq!(
                    mine.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    slice.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(b, &vec![(world - 1) as f32; 3]);
            }
        }
    }

    #[test]
    fn buffers_longer_than_one_message_are_summed_whole() {
        let n = 2 * PIECE + 3;
        let out = on_ranks(loopback_group(2).unwrap(), |mut c| {
            let r = c.rank() as f32;
            let mut v: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 + r).collect();
            c.all_reduce_sum(&mut v).unwrap();
            let g = c.all_gather(&v[..PIECE + 1]).unwrap();
            (v, g.len())
        });
        for (v, g) in &out {
            assert!(v
                .iter()
                .enumerate()
                .all(|(i, &x)| x == 2.0 * (i % 1000) as f32 + 1.0));
            assert_eq!(*g, 2 * (PIECE + 1));
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
        let mut solo = loopback_group(2).unwrap().remove(0);
        let e = solo.reduce_scatter_sum(&[1.0; 3]).unwrap_err().to_string();
        assert!(e.contains("multiple of the group size"), "{e}");
    }

    #[test]
    fn split_forms_tensor_and_data_parallel_groups() {
        let l = Layout::new(4, 2).unwrap();
        let out = on_ranks(loopback_group(4).unwrap(), |mut world| {
            let me = world.rank();
            let mut tp = world.split(&l.tp_groups()).unwrap();
            let mut dp = world.split(&l.dp_groups()).unwrap();
            let mut a = vec![me as f32];
            tp.all_reduce_sum(&mut a).unwrap();
            let mut b = vec![me as f32];
            dp.all_reduce_sum(&mut b).unwrap();
            (tp.rank(), tp.world_size(), a[0], dp.rank(), b[0])
        });
        assert_eq!(
            out,
            [
                (0, 2, 1.0, 0, 2.0),
                (1, 2, 1.0, 0, 4.0),
                (0, 2, 5.0, 1, 2.0),
                (1, 2, 5.0, 1, 4.0)
            ]
        );
        let mut one = loopback_group(1).unwrap().remove(0);
        let mut g = one.split(&[vec![0]]).unwrap();
        let mut v = [3.0f32];
        g.all_reduce_sum(&mut v).unwrap();
        assert_eq!((g.world_size(), v[0]), (1, 3.0));
        let e = on_ranks(loopback_group(2).unwrap(), |mut w| {
            w.split(&[vec![0]]).err().map(|e| e.to_string())
        });
        assert!(
            e[0].as_deref().unwrap().contains("leave rank 1 out"),
            "{e:?}"
        );
    }

    #[test]
    fn loopback_layout_places_ranks_as_the_layout_says() {
        let groups = loopback_layout(4, 2).unwrap();
        let ranks: Vec<_> = groups
            .iter()
            .map(|(t, d)| (t.rank(), t.world_size(), d.rank(), d.world_size()))
            .collect();
        assert_eq!(
            ranks,
            [(0, 2, 0, 2), (1, 2, 0, 2), (0, 2, 1, 2), (1, 2, 1, 2)]
        );
    }
}
