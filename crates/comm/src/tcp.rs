//! The TCP backend: a star around the group's rank 0. Every rank sends its part of each exchange to rank 0, which
//! checks that all ranks made the same call, combines the parts in rank order and sends each rank its result, or
//! the error, so that every rank fails the same call and the group stays in step. Slow next to NCCL, but it runs
//! every parallel layout on any machine, and its results do not depend on timing.
//!
//! On the wire (little-endian), a request (rank → rank 0) is `[payload bytes: u64][op: u8][length: u64][root:
//! u64][payload]` and a reply (rank 0 → rank) `[payload bytes: u64][status: u8][payload]`, an error reply's
//! payload being its message. Values travel as their little-endian bytes, so they arrive bit for bit (NaN
//! payloads included), and large buffers travel in pieces of at most 4 MiB.

use crate::error::{CommError, Result};
use crate::layout::Layout;
use crate::Collective;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Bytes of values per message (4 MiB), so the wire copies stay small whatever the buffer's size.
const PIECE_BYTES: usize = 4 << 20;
/// f32 values per message.
const PIECE: usize = PIECE_BYTES / 4;

/// How long a member of a new group keeps trying to reach the group's leader; the leader waits twice as long.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Reply statuses.
const OK: u8 = 0;
const FAILED_INVALID: u8 = 1;
const FAILED_NET: u8 = 2;

/// The exchanges, as requests name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    SumF32 = 1,
    SumF64 = 2,
    Max = 3,
    Gather = 4,
    ReduceScatter = 5,
    Broadcast = 6,
    Split = 7,
}

impl Op {
    fn from_byte(b: u8) -> Option<Op> {
        [
            Op::SumF32,
            Op::SumF64,
            Op::Max,
            Op::Gather,
            Op::ReduceScatter,
            Op::Broadcast,
            Op::Split,
        ]
        .into_iter()
        .find(|op| *op as u8 == b)
    }

    fn name(self) -> &'static str {
        match self {
            Op::SumF32 => "all_reduce_sum",
            Op::SumF64 => "all_reduce_sum_f64",
            Op::Max => "all_reduce_max",
            Op::Gather => "all_gather",
            Op::ReduceScatter => "reduce_scatter_sum",
            Op::Broadcast => "broadcast",
            Op::Split => "split",
        }
    }
}

/// What a rank says it is doing, with every message of a call; rank 0 checks that all ranks say the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Call {
    op: Op,
    /// The values of the whole call (not of one piece).
    len: u64,
    /// Broadcast: the rank whose values everyone gets.
    root: u64,
}

impl Call {
    fn new(op: Op, len: usize, root: usize) -> Call {
        Call {
            op,
            len: len as u64,
            root: root as u64,
        }
    }

    fn describe(&self) -> String {
        match self.op {
            Op::Broadcast => format!("broadcast of {} values from rank {}", self.len, self.root),
            Op::Split => "split".into(),
            op => format!("{} of {} values", op.name(), self.len),
        }
    }

    /// Rank 0's check of the call every rank agrees on.
    fn check(&self, world: usize) -> Result<()> {
        let w = world as u64;
        match self.op {
            Op::ReduceScatter if !self.len.is_multiple_of(w) => Err(CommError::Invalid(format!(
                "reduce_scatter_sum of {} values over {world} ranks: the length must be a multiple of the group size",
                self.len
            ))),
            Op::Broadcast if self.root >= w => Err(CommError::Invalid(format!(
                "broadcast from rank {} in a group of {world}",
                self.root
            ))),
            _ => Ok(()),
        }
    }

    fn encode(&self) -> [u8; 17] {
        let mut h = [0u8; 17];
        h[0] = self.op as u8;
        h[1..9].copy_from_slice(&self.len.to_le_bytes());
        h[9..].copy_from_slice(&self.root.to_le_bytes());
        h
    }

    fn decode(h: &[u8; 17]) -> Result<Call> {
        let op = Op::from_byte(h[0]).ok_or_else(|| {
            CommError::Net(format!(
                "a request for unknown operation {}: the ranks are out of step",
                h[0]
            ))
        })?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Ok(Call {
            op,
            len: word(1),
            root: word(9),
        })
    }
}

/// What rank 0 sends back from one round.
enum Reply {
    /// The same bytes to every rank.
    All(Vec<u8>),
    /// The same bytes to every rank but the one named, which gets nothing (it sent them).
    AllBut(usize, Vec<u8>),
    /// Each rank its own bytes, in rank order.
    Each(Vec<Vec<u8>>),
}

impl Reply {
    fn for_rank(&self, r: usize) -> &[u8] {
        match self {
            Reply::All(b) => b,
            Reply::AllBut(k, _) if *k == r => &[],
            Reply::AllBut(_, b) => b,
            Reply::Each(v) => v.get(r).map_or(&[], Vec::as_slice),
        }
    }

    fn into_rank0(self) -> Vec<u8> {
        match self {
            Reply::All(b) => b,
            Reply::AllBut(0, _) => vec![],
            Reply::AllBut(_, b) => b,
            Reply::Each(v) => v.into_iter().next().unwrap_or_default(),
        }
    }
}

/// A value that travels as its little-endian bytes.
trait Wire: Copy + 'static {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    /// `b` holds exactly `SIZE` bytes.
    fn get(b: &[u8]) -> Self;
}

impl Wire for f32 {
    const SIZE: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        f32::from_le_bytes(a)
    }
}

impl Wire for f64 {
    const SIZE: usize = 8;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        f64::from_le_bytes(a)
    }
}

fn to_bytes<T: Wire>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * T::SIZE);
    for x in v {
        x.put(&mut out);
    }
    out
}

fn values<T: Wire>(b: &[u8]) -> impl Iterator<Item = T> + '_ {
    b.chunks_exact(T::SIZE).map(T::get)
}

fn out_of_step(got: usize, want: usize) -> CommError {
    CommError::Net(format!(
        "a reply of {got} bytes where {want} were due: the ranks are out of step"
    ))
}

/// Fills `dst` from `b`, which must hold exactly its values.
fn read_into<T: Wire>(dst: &mut [T], b: &[u8]) -> Result<()> {
    if b.len() != dst.len() * T::SIZE {
        return Err(out_of_step(b.len(), dst.len() * T::SIZE));
    }
    for (d, v) in dst.iter_mut().zip(values(b)) {
        *d = v;
    }
    Ok(())
}

/// Every rank's part has rank 0's length, else an error naming the first rank that differs.
fn same_lengths(parts: &[Vec<u8>]) -> Result<()> {
    let n = parts.first().map_or(0, Vec::len);
    match parts.iter().enumerate().find(|(_, b)| b.len() != n) {
        Some((i, b)) => Err(CommError::Invalid(format!(
            "rank {i} sent {} bytes where rank 0 sent {n}",
            b.len()
        ))),
        None => Ok(()),
    }
}

/// The element-wise fold of every rank's part, in rank order.
fn fold<T: Wire>(parts: &[Vec<u8>], f: impl Fn(T, T) -> T) -> Result<Vec<u8>> {
    same_lengths(parts)?;
    let Some((first, rest)) = parts.split_first() else {
        return Ok(vec![]);
    };
    let mut acc: Vec<T> = values(first).collect();
    for p in rest {
        for (a, v) in acc.iter_mut().zip(values(p)) {
            *a = f(*a, v);
        }
    }
    Ok(to_bytes(&acc))
}

/// The maximum of two values, the first on a tie; NaN when either is NaN.
fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || a >= b {
        a
    } else {
        b
    }
}

/// The pieces of `n` values, `per` at a time; one empty piece when `n` is 0, so every call exchanges at least
/// once and a rank with no values still takes part in the length check.
fn pieces(n: usize, per: usize) -> impl Iterator<Item = Range<usize>> {
    (0..n.div_ceil(per).max(1)).map(move |k| (k * per).min(n)..((k + 1) * per).min(n))
}

/// The part of `part` that lies in `piece`, as positions within `piece`.
fn within(piece: &Range<usize>, part: Range<usize>) -> Range<usize> {
    let lo = part.start.clamp(piece.start, piece.end);
    let hi = part.end.clamp(lo, piece.end);
    lo - piece.start..hi - piece.start
}

fn net(e: std::io::Error) -> CommError {
    CommError::Net(format!("exchange failed: {e} (did another rank stop?)"))
}

/// Writes one message: its payload length, `head`, then `payload`.
fn send(s: &mut TcpStream, head: &[u8], payload: &[u8]) -> Result<()> {
    let mut h = Vec::with_capacity(8 + head.len());
    h.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    h.extend_from_slice(head);
    s.write_all(&h).map_err(net)?;
    s.write_all(payload).map_err(net)
}

/// Reads one message with a head of `H` bytes; a payload longer than `limit` bytes is an error.
fn recv<const H: usize>(s: &mut TcpStream, limit: usize) -> Result<([u8; H], Vec<u8>)> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).map_err(net)?;
    let mut head = [0u8; H];
    s.read_exact(&mut head).map_err(net)?;
    let n = u64::from_le_bytes(len);
    if n > limit as u64 {
        return Err(CommError::Net(format!(
            "a message of {n} bytes, more than any exchange of this group sends: the ranks are out of step"
        )));
    }
    let mut body = vec![0u8; n as usize];
    s.read_exact(&mut body).map_err(net)?;
    Ok((head, body))
}

/// One group's collective over TCP: rank 0 holds a connection to every other rank, every other rank its
/// connection to rank 0. Every exchange goes through rank 0, which combines in rank order, so every rank gets
/// bit-identical results. A failed call (the ranks disagree on the operation, length or root) returns the same
/// error on every rank and leaves the group usable; a lost connection is a [`CommError::Net`].
#[derive(Debug)]
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: the connections to ranks 1, 2, ... in order. Other ranks: the connection to rank 0.
    links: Vec<TcpStream>,
}

impl TcpCollective {
    /// Rank `rank` of a group of `world` over `links` as a rendezvous leaves them: on rank 0 the streams of ranks
    /// 1..world in rank order, on any other rank the one stream to rank 0. An error when the count is wrong.
    pub fn new(rank: usize, world: usize, links: Vec<TcpStream>) -> Result<Self> {
        let want = if rank == 0 {
            world.saturating_sub(1)
        } else {
            1
        };
        if world == 0 || rank >= world || links.len() != want {
            return Err(CommError::Invalid(format!(
                "collective group: rank {rank} of {world} needs {want} connection(s), got {}",
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

    /// The longest payload any message of this group carries.
    fn limit(&self) -> usize {
        4 * PIECE.max(self.world) + 64 * self.world + 1024
    }

    /// One round: every rank sends `mine` with its `call`; rank 0 reads every rank's request (all of them, so
    /// the group stays in step after a mismatch), checks that the calls agree, `combine`s the parts (index =
    /// rank) and replies. Returns this rank's reply, or the round's error on every rank.
    fn round(
        &mut self,
        call: Call,
        mine: Vec<u8>,
        combine: impl FnOnce(Vec<Vec<u8>>) -> Result<Reply>,
    ) -> Result<Vec<u8>> {
        let limit = self.limit();
        if self.rank != 0 {
            let s = &mut self.links[0];
            send(s, &call.encode(), &mine)?;
            let ([status], body) = recv::<1>(s, limit)?;
            let text = || String::from_utf8_lossy(&body).into_owned();
            return match status {
                OK => Ok(body),
                FAILED_INVALID => Err(CommError::Invalid(text())),
                FAILED_NET => Err(CommError::Net(text())),
                b => Err(CommError::Net(format!(
                    "a reply with unknown status {b}: the ranks are out of step"
                ))),
            };
        }
        let mut parts = vec![mine];
        let mut failed = None;
        for (i, s) in self.links.iter_mut().enumerate() {
            let got = recv::<17>(s, limit).and_then(|(h, b)| Ok((Call::decode(&h)?, b)));
            let part = match got {
                Ok((c, _)) if c != call => Err(CommError::Invalid(format!(
                    "rank {} called {} where rank 0 called {}",
                    i + 1,
                    c.describe(),
                    call.describe()
                ))),
                other => other.map(|(_, b)| b),
            };
            match part {
                Ok(b) => parts.push(b),
                Err(e) => {
                    failed.get_or_insert(e);
                    parts.push(vec![]);
                }
            }
        }
        let result = match failed {
            Some(e) => Err(e),
            None => call.check(self.world).and_then(|()| combine(parts)),
        };
        match result {
            Ok(reply) => {
                let mut sent = Ok(());
                for (i, s) in self.links.iter_mut().enumerate() {
                    let r = send(s, &[OK], reply.for_rank(i + 1));
                    sent = sent.and(r);
                }
                sent.map(|()| reply.into_rank0())
            }
            Err(e) => {
                let (status, text) = match &e {
                    CommError::Invalid(m) => (FAILED_INVALID, m),
                    CommError::Net(m) => (FAILED_NET, m),
                };
                for s in &mut self.links {
                    // Best effort: a rank that stopped cannot be told.
                    let _ = send(s, &[status], text.as_bytes());
                }
                Err(e)
            }
        }
    }

    /// An element-wise reduction of every rank's `buf` with `f`, in rank order, in pieces of 4 MiB.
    fn reduce<T: Wire>(
        &mut self,
        buf: &mut [T],
        op: Op,
        f: impl Fn(T, T) -> T + Copy,
    ) -> Result<()> {
        let call = Call::new(op, buf.len(), 0);
        for r in pieces(buf.len(), PIECE_BYTES / T::SIZE) {
            let piece = &mut buf[r];
            let out = self.round(call, to_bytes(piece), |parts| {
                Ok(Reply::All(fold(&parts, f)?))
            })?;
            read_into(piece, &out)?;
        }
        Ok(())
    }

    /// This rank's group of `groups` as a new collective, whose rank is this rank's position in its group.
    ///
    /// Every rank of `self` calls it with the same `groups`: a partition of `0..world_size()`, each group's ranks
    /// ascending (anything else is an error on every rank). Each rank listens on the address of its own end of
    /// its link; rank 0 collects the addresses and sends every rank the table; each group's lowest rank accepts
    /// the others' connections (each names its rank first). A group of one gets no connections.
    pub fn split(&mut self, groups: &[Vec<usize>]) -> Result<TcpCollective> {
        if self.world == 1 {
            check_partition(groups, 1)?;
            return TcpCollective::new(0, 1, vec![]);
        }
        let ip = self.links[0].local_addr().map_err(net)?.ip();
        let listener = TcpListener::bind((ip, 0)).map_err(net)?;
        let addr = listener.local_addr().map_err(net)?;
        let plan = format!("{groups:?}");
        let table = self.round(
            Call::new(Op::Split, 0, 0),
            format!("{addr}\n{plan}").into_bytes(),
            |parts| {
                let mut table = String::new();
                for (r, p) in parts.iter().enumerate() {
                    let text = String::from_utf8_lossy(p);
                    let (a, g) = text.split_once('\n').unwrap_or((&text, ""));
                    if g != plan {
                        return Err(CommError::Invalid(format!(
                            "rank {r} splits the group into {g} where rank 0 splits it into {plan}"
                        )));
                    }
                    table.push_str(a);
                    table.push('\n');
                }
                Ok(Reply::All(table.into_bytes()))
            },
        )?;
        // Every rank has the same groups now, so a bad partition fails on all of them.
        check_partition(groups, self.world)?;
        let table: Vec<SocketAddr> = String::from_utf8_lossy(&table)
            .lines()
            .map(|l| {
                l.parse().map_err(|_| {
                    CommError::Net(format!("split: an unreadable address {l:?} in the table"))
                })
            })
            .collect::<Result<_>>()?;
        if table.len() != self.world {
            return Err(CommError::Net(format!(
                "split: a table of {} addresses for {} ranks",
                table.len(),
                self.world
            )));
        }
        let mine = groups
            .iter()
            .find(|g| g.contains(&self.rank))
            .ok_or_else(|| {
                CommError::Invalid(format!("groups {groups:?} leave rank {} out", self.rank))
            })?;
        let me = mine.iter().position(|&r| r == self.rank).unwrap_or(0);
        if mine.len() == 1 {
            TcpCollective::new(0, 1, vec![])
        } else if me == 0 {
            accept_members(&listener, mine)
        } else {
            connect_to_leader(table[mine[0]], self.rank, me, mine.len())
        }
    }
}

/// `groups` is a partition of `0..world` into non-empty groups with ascending ranks, else an error saying how not.
fn check_partition(groups: &[Vec<usize>], world: usize) -> Result<()> {
    let mut seen = vec![false; world];
    for g in groups {
        if g.is_empty() || g.windows(2).any(|w| w[0] >= w[1]) {
            return Err(CommError::Invalid(format!(
                "group {g:?}: groups must be non-empty with ranks in ascending order"
            )));
        }
        for &r in g {
            if r >= world || seen[r] {
                return Err(CommError::Invalid(format!(
                    "groups {groups:?}: rank {r} is outside 0..{world} or in two groups"
                )));
            }
            seen[r] = true;
        }
    }
    match seen.iter().position(|s| !s) {
        Some(r) => Err(CommError::Invalid(format!(
            "groups {groups:?} leave rank {r} out"
        ))),
        None => Ok(()),
    }
}

/// The leader's side of forming `group` (its first rank): accepts the other members' connections, each of which
/// names its world rank in 8 bytes, and orders them by rank.
fn accept_members(listener: &TcpListener, group: &[usize]) -> Result<TcpCollective> {
    listener.set_nonblocking(true).map_err(net)?;
    let deadline = Instant::now() + 2 * CONNECT_WAIT;
    let mut links: Vec<(usize, TcpStream)> = Vec::new();
    while links.len() + 1 < group.len() {
        let mut s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(CommError::Net(format!(
                    "group {group:?}: {} of its {} other members connected within {} s",
                    links.len(),
                    group.len() - 1,
                    (2 * CONNECT_WAIT).as_secs()
                )))
            }
            Err(e) => return Err(net(e)),
        };
        s.set_nonblocking(false).map_err(net)?;
        s.set_read_timeout(Some(CONNECT_WAIT)).map_err(net)?;
        let mut hello = [0u8; 8];
        s.read_exact(&mut hello).map_err(net)?;
        let r = u64::from_le_bytes(hello);
        match usize::try_from(r) {
            Ok(r) if group[1..].contains(&r) && !links.iter().any(|(q, _)| *q == r) => {
                links.push((r, s))
            }
            _ => {
                return Err(CommError::Invalid(format!(
                    "group {group:?}: unexpected connection from rank {r}"
                )))
            }
        }
    }
    links.sort_by_key(|(r, _)| *r);
    TcpCollective::new(0, group.len(), links.into_iter().map(|(_, s)| s).collect())
}

/// A member's side of forming a group: connects to the leader at `addr` (retrying for up to 10 s) and names
/// its world `rank`; `me` is its position in the group of `size`.
fn connect_to_leader(
    addr: SocketAddr,
    rank: usize,
    me: usize,
    size: usize,
) -> Result<TcpCollective> {
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut s = loop {
        match TcpStream::connect_timeout(&addr, CONNECT_WAIT) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(net(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.write_all(&(rank as u64).to_le_bytes()).map_err(net)?;
    TcpCollective::new(me, size, vec![s])
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.reduce(buf, Op::SumF32, |a, b| a + b)
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.reduce(buf, Op::SumF64, |a, b| a + b)
    }

    /// The maximum in rank order (on a tie the lower rank's value); NaN where any rank has NaN.
    fn all_reduce_max(&mut self, buf: &mut [f32]) -> Result<()> {
        self.reduce(buf, Op::Max, max_nan)
    }

    fn all_gather(&mut self, local: &[f32]) -> Result<Vec<f32>> {
        let (n, world) = (local.len(), self.world);
        let mut out = vec![
            0f32;
            n.checked_mul(world).ok_or_else(|| {
                CommError::Invalid(format!(
                    "all_gather of {n} values over {world} ranks: too many values"
                ))
            })?
        ];
        // Each rank sends 1/world of a piece per round, so rank 0's reply stays one piece long.
        for r in pieces(n, (PIECE / world).max(1)) {
            let k = r.len();
            let got = self.round(
                Call::new(Op::Gather, n, 0),
                to_bytes(&local[r.clone()]),
                |parts| {
                    same_lengths(&parts)?;
                    Ok(Reply::All(parts.concat()))
                },
            )?;
            if got.len() != 4 * k * world {
                return Err(out_of_step(got.len(), 4 * k * world));
            }
            for q in 0..world {
                read_into(
                    &mut out[q * n + r.start..q * n + r.end],
                    &got[4 * k * q..4 * k * (q + 1)],
                )?;
            }
        }
        Ok(out)
    }

    fn reduce_scatter_sum(&mut self, buf: &[f32]) -> Result<Vec<f32>> {
        let (n, world, rank) = (buf.len(), self.world, self.rank);
        // Rank 0 checks that `n` is a multiple of `world` before any values are used.
        let part = n / world;
        let mut out = Vec::with_capacity(part);
        for r in pieces(n, PIECE) {
            let got = self.round(
                Call::new(Op::ReduceScatter, n, 0),
                to_bytes(&buf[r.clone()]),
                |parts| {
                    let sum = fold::<f32>(&parts, |a, b| a + b)?;
                    Ok(Reply::Each(
                        (0..world)
                            .map(|q| {
                                let w = within(&r, q * part..(q + 1) * part);
                                sum[4 * w.start..4 * w.end].to_vec()
                            })
                            .collect(),
                    ))
                },
            )?;
            let mine = within(&r, rank * part..(rank + 1) * part);
            if got.len() != 4 * mine.len() {
                return Err(out_of_step(got.len(), 4 * mine.len()));
            }
            out.extend(values::<f32>(&got));
        }
        Ok(out)
    }

    /// The root sends its values (through rank 0 when it is another rank); the others send only the call.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let call = Call::new(Op::Broadcast, buf.len(), root);
        for r in pieces(buf.len(), PIECE) {
            let piece = &mut buf[r];
            let mine = if self.rank == root {
                to_bytes(piece)
            } else {
                vec![]
            };
            let want = 4 * piece.len();
            // Rank 0 has checked that `root` is in the group before this runs.
            let got = self.round(call, mine, |mut parts| {
                let data = std::mem::take(&mut parts[root]);
                if data.len() != want {
                    return Err(CommError::Invalid(format!(
                        "broadcast: root rank {root} sent {} bytes where rank 0 expected {want}",
                        data.len()
                    )));
                }
                Ok(Reply::AllBut(root, data))
            })?;
            if self.rank != root {
                read_into(piece, &got)?;
            }
        }
        Ok(())
    }
}

/// A connected group of `world` ranks on loopback, for tests: element `r` is rank `r`'s collective. It connects
/// synchronously, so the collectives can then be moved to one thread each.
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

/// The tensor- and data-parallel groups of `world` ranks at TP size `tp` on loopback, for tests: element `r` is
/// world rank `r`'s (TP group, DP group), placed as [`Layout`] says, each group its own loopback group.
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

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A quiet NaN with a payload, which must arrive bit for bit.
    const NAN: f32 = f32::from_bits(0x7fc0_1234);

    #[test]
    fn every_rank_gets_the_same_rank_order_sum() {
        for world in [1, 2, 3] {
            let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
                let mut v = values(c.rank());
                c.all_reduce_sum(&mut v).unwrap();
                let mut d = vec![c.rank() as f64 * 0.5, 1.0];
                c.all_reduce_sum_f64(&mut d).unwrap();
                let mut empty: [f32; 0] = [];
                c.all_reduce_sum(&mut empty).unwrap();
                (v, d)
            });
            let mut want = values(0);
            for r in 1..world {
                for (w, v) in want.iter_mut().zip(values(r)) {
                    *w += v;
                }
            }
            let half: f64 = (0..world).map(|r| r as f64 * 0.5).sum();
            for (v, d) in &out {
                assert_eq!(bits(v), bits(&want), "world {world}");
                assert_eq!(d.as_slice(), [half, world as f64].as_slice());
            }
        }
    }

    #[test]
    fn max_is_taken_over_every_rank_and_keeps_nan() {
        for world in [1, 2, 3] {
            let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
                let r = c.rank() as f32;
                let mut m = vec![r, -r, if c.rank() + 1 == world { NAN } else { 1.0 }];
                c.all_reduce_max(&mut m).unwrap();
                m
            });
            for m in &out {
                assert_eq!(m[..2], [(world - 1) as f32, 0.0], "world {world}");
                assert!(
                    m[2].is_nan(),
                    "world {world}: a NaN on one rank is the maximum"
                );
            }
        }
    }

    #[test]
    fn all_gather_concatenates_in_rank_order_bit_for_bit() {
        for world in [1, 2, 3] {
            let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
                let r = c.rank();
                (
                    c.all_gather(&[r as f32, 0.5, NAN]).unwrap(),
                    c.all_gather(&[]).unwrap(),
                )
            });
            let want: Vec<f32> = (0..world).flat_map(|r| [r as f32, 0.5, NAN]).collect();
            for (g, empty) in &out {
                assert_eq!(bits(g), bits(&want), "world {world}");
                assert!(empty.is_empty());
            }
        }
    }

    #[test]
    fn reduce_scatter_is_exactly_the_slice_of_the_all_reduce() {
        for world in [1, 2, 3] {
            let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
                let r = c.rank();
                // 2 values per rank, whose sum depends on the order of the ranks.
                let buf: Vec<f32> = (0..2 * world)
                    .map(|i| [1e8, 1.0, -1e8][(i + r) % 3] * (r + 1) as f32)
                    .collect();
                let mine = c.reduce_scatter_sum(&buf).unwrap();
                let mut all = buf.clone();
                c.all_reduce_sum(&mut all).unwrap();
                assert!(c.reduce_scatter_sum(&[]).unwrap().is_empty());
                (mine, all[2 * r..2 * r + 2].to_vec())
            });
            for (mine, slice) in &out {
                assert_eq!(bits(mine), bits(slice), "world {world}");
            }
        }
    }

    #[test]
    fn broadcast_sends_any_roots_values() {
        for world in [1, 2, 3] {
            for root in 0..world {
                let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
                    let r = c.rank() as f32;
                    let mut b = vec![r, r + 0.5, if c.rank() == root { NAN } else { 0.0 }];
                    c.broadcast(&mut b, root).unwrap();
                    b
                });
                let want = [root as f32, root as f32 + 0.5, NAN];
                for b in &out {
                    assert_eq!(bits(b), bits(&want), "world {world}, root {root}");
                }
            }
        }
    }

    #[test]
    fn buffers_longer_than_one_message_arrive_whole() {
        let n = 2 * PIECE + 3;
        let world = 3;
        let out = on_ranks(loopback_group(world).unwrap(), |mut c| {
            let r = c.rank();
            let mut v: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 + r as f32).collect();
            let mine = c.reduce_scatter_sum(&v[..n - n % world]).unwrap();
            c.all_reduce_sum(&mut v).unwrap();
            let g = c.all_gather(&v[..PIECE + 1]).unwrap();
            let mut d: Vec<f64> = (0..PIECE / 2 + 5).map(|i| (i + r) as f64).collect();
            c.all_reduce_sum_f64(&mut d).unwrap();
            let mut b = vec![r as f32; PIECE + 7];
            c.broadcast(&mut b, 2).unwrap();
            (r, v, mine, g, d, b)
        });
        let part = n / world;
        for (r, v, mine, g, d, b) in &out {
            assert!(v
                .iter()
                .enumerate()
                .all(|(i, &x)| x == 3.0 * (i % 1000) as f32 + 3.0));
            assert_eq!(bits(mine), bits(&v[r * part..(r + 1) * part]));
            assert_eq!(g.len(), world * (PIECE + 1));
            for q in 0..world {
                assert_eq!(
                    bits(&g[q * (PIECE + 1)..(q + 1) * (PIECE + 1)]),
                    bits(&v[..PIECE + 1])
                );
            }
            assert!(d.iter().enumerate().all(|(i, &x)| x == (3 * i + 3) as f64));
            assert!(b.iter().all(|&x| x == 2.0));
        }
    }

    /// Runs `f` on the two ranks of a loopback group; each gets its rank.
    fn on_two<T: Send>(f: impl Fn(&mut TcpCollective) -> T + Sync) -> Vec<(T, f32)> {
        on_ranks(loopback_group(2).unwrap(), |mut c| {
            let got = f(&mut c);
            // The group is still in step after a failed call.
            let mut v = [c.rank() as f32 + 1.0];
            c.all_reduce_sum(&mut v).unwrap();
            (got, v[0])
        })
    }

    fn err_text<T>(r: Result<T>) -> String {
        match r {
            Ok(_) => "no error".into(),
            Err(e) => e.to_string(),
        }
    }

    /// The error a call must give, and the call each rank makes.
    type Case<'a> = (&'a str, &'a (dyn Fn(&mut TcpCollective) -> String + Sync));

    #[test]
    fn mismatched_calls_fail_on_every_rank_and_leave_the_group_usable() {
        let cases: [Case; 5] = [
            (
                "rank 1 called all_reduce_sum of 3 values where rank 0 called all_reduce_sum of 4 values",
                &|c| err_text(c.all_reduce_sum(&mut vec![1.0; 4 - c.rank()])),
            ),
            (
                "rank 1 called all_gather of 1 values where rank 0 called all_gather of 2 values",
                &|c| err_text(c.all_gather(&vec![1.0; 2 - c.rank()])),
            ),
            (
                "rank 1 called reduce_scatter_sum of 4 values where rank 0 called reduce_scatter_sum of 2 values",
                &|c| err_text(c.reduce_scatter_sum(&vec![1.0; 2 + 2 * c.rank()])),
            ),
            (
                "rank 1 called broadcast of 2 values from rank 1 where rank 0 called broadcast of 2 values from rank 0",
                &|c| {
                    let root = c.rank();
                    err_text(c.broadcast(&mut [0.0; 2], root))
                },
            ),
            (
                "rank 1 called all_gather of 2 values where rank 0 called all_reduce_sum of 2 values",
                &|c| match c.rank() {
                    0 => err_text(c.all_reduce_sum(&mut [0.0; 2])),
                    _ => err_text(c.all_gather(&[0.0; 2])),
                },
            ),
        ];
        for (want, call) in cases {
            for (e, after) in on_two(call) {
                assert!(e.contains(want), "{e}");
                assert_eq!(after, 3.0);
            }
        }
    }

    #[test]
    fn bad_lengths_and_roots_fail_on_every_rank() {
        let out = on_ranks(loopback_group(3).unwrap(), |mut c| {
            let a = err_text(c.reduce_scatter_sum(&[1.0; 4]));
            let b = err_text(c.broadcast(&mut [1.0; 2], 3));
            (a, b)
        });
        for (a, b) in &out {
            assert!(
                a.contains("reduce_scatter_sum of 4 values over 3 ranks: the length must be a multiple of the group size"),
                "{a}"
            );
            assert!(b.contains("broadcast from rank 3 in a group of 3"), "{b}");
        }
        let mut solo = loopback_group(1).unwrap().remove(0);
        assert!(err_text(solo.broadcast(&mut [1.0], 1)).contains("group of 1"));
    }

    #[test]
    fn a_lost_rank_is_a_network_error() {
        let mut group = loopback_group(3).unwrap();
        let two = group.pop().unwrap();
        let mut one = group.pop().unwrap();
        let mut root = group.pop().unwrap();
        drop(two);
        let t = std::thread::spawn(move || one.all_reduce_sum(&mut [1.0]));
        let e = root.all_reduce_sum(&mut [1.0]).unwrap_err();
        assert!(matches!(e, CommError::Net(_)), "{e}");
        let e = t.join().unwrap().unwrap_err();
        assert!(
            matches!(&e, CommError::Net(m) if m.contains("did another rank stop?")),
            "rank 1 hears of it: {e}"
        );
        assert!(loopback_group(0).is_err());
        let e = TcpCollective::new(1, 2, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("rank 1 of 2 needs 1 connection(s), got 0"),
            "{e}"
        );
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
            let mut c = vec![1.0f32];
            world.all_reduce_sum(&mut c).unwrap();
            (tp.rank(), tp.world_size(), a[0], dp.rank(), b[0], c[0])
        });
        assert_eq!(
            out,
            [
                (0, 2, 1.0, 0, 2.0, 4.0),
                (1, 2, 1.0, 0, 4.0, 4.0),
                (0, 2, 5.0, 1, 2.0, 4.0),
                (1, 2, 5.0, 1, 4.0, 4.0)
            ]
        );
        // Groups of one and of the whole world.
        let out = on_ranks(loopback_group(3).unwrap(), |mut world| {
            let mut solo = world.split(&[vec![0], vec![1], vec![2]]).unwrap();
            let mut all = world.split(&[vec![0, 1, 2]]).unwrap();
            let mut v = [world.rank() as f32];
            solo.all_reduce_sum(&mut v).unwrap();
            all.all_reduce_sum(&mut v).unwrap();
            (solo.world_size(), all.rank(), v[0])
        });
        assert_eq!(out, [(1, 0, 3.0), (1, 1, 3.0), (1, 2, 3.0)]);
    }

    #[test]
    fn split_of_one_rank() {
        let mut one = loopback_group(1).unwrap().remove(0);
        let mut g = one.split(&[vec![0]]).unwrap();
        let mut v = [3.0f32];
        g.all_reduce_sum(&mut v).unwrap();
        assert_eq!((g.rank(), g.world_size(), v[0]), (0, 1, 3.0));
        assert!(err_text(one.split(&[vec![0], vec![1]])).contains("outside 0..1"));
    }

    #[test]
    fn bad_splits_fail_on_every_rank() {
        let cases: [(&[Vec<usize>], &str); 4] = [
            (&[vec![0]], "leave rank 1 out"),
            (&[vec![1, 0]], "ascending order"),
            (&[vec![0, 1], vec![1]], "in two groups"),
            (&[vec![0, 2], vec![1]], "outside 0..2"),
        ];
        for (groups, want) in cases {
            let e = on_ranks(loopback_group(2).unwrap(), |mut w| {
                err_text(w.split(groups))
            });
            for e in &e {
                assert!(e.contains(want), "{e}");
            }
        }
        // Ranks that disagree on the groups.
        let e = on_ranks(loopback_group(2).unwrap(), |mut w| {
            let groups = if w.rank() == 0 {
                vec![vec![0, 1]]
            } else {
                vec![vec![0], vec![1]]
            };
            err_text(w.split(&groups))
        });
        for e in &e {
            assert!(
                e.contains(
                    "rank 1 splits the group into [[0], [1]] where rank 0 splits it into [[0, 1]]"
                ),
                "{e}"
            );
        }
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
        assert!(loopback_layout(4, 3).is_err());
    }

    #[test]
    fn pieces_cover_the_buffer_once() {
        let ends = |n| pieces(n, 4).map(|r| (r.start, r.end)).collect::<Vec<_>>();
        assert_eq!(ends(0), [(0, 0)]);
        assert_eq!(ends(9), [(0, 4), (4, 8), (8, 9)]);
        assert_eq!(within(&(4..8), 2..6), 0..2);
        assert_eq!(within(&(4..8), 9..12), 4..4);
        assert_eq!(within(&(4..8), 0..2), 0..0);
    }
}
