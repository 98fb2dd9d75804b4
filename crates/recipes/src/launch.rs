//! Executors: how a recipe's processes start. `direct` runs in the calling process; `local` starts one worker
//! process per GPU with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
//! prefixes and collects their output; `slurm` writes an sbatch script whose srun starts the same workers on
//! num_nodes x num_gpus_per_node tasks. Workers meet at a rank-0 TCP rendezvous that hands every rank the
//! same 128-byte id (the slot an NCCL unique id fits) and keeps the connections open for data-parallel training
//! (`coil_train::dist::TcpCollective`).

use crate::error::{io, RecipeError, Result};
use crate::recipe::Recipe;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes of the id rank 0 hands out (NCCL's `NCCL_UNIQUE_ID_BYTES`).
pub const UNIQUE_ID_BYTES: usize = 128;
const HELLO: &str = "coil-rendezvous-1";

/// A worker's place in the job, from torchrun-style environment variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEnv {
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl WorkerEnv {
    /// Reads RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; `None` when WORLD_SIZE is not set.
    pub fn from_env() -> Result<Option<WorkerEnv>> {
        let get = |k: &str| std::env::var(k).ok();
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |k: &str, v: Option<String>| -> Result<usize> {
            v.unwrap_or_else(|| "0".into()).trim().parse().map_err(|_| {
                RecipeError::Launch(format!("environment variable {k}: expected an integer"))
            })
        };
        let env = WorkerEnv {
            rank: num("RANK", get("RANK"))?,
            local_rank: num("LOCAL_RANK", get("LOCAL_RANK"))?,
            world_size: num("WORLD_SIZE", Some(world))?,
            master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port: num("MASTER_PORT", get("MASTER_PORT").or(Some("29500".into())))? as u16,
        };
        if env.world_size == 0 || env.rank >= env.world_size {
            return Err(RecipeError::Launch(format!(
                "RANK {} is not below WORLD_SIZE {}",
                env.rank, env.world_size
            )));
        }
        Ok(Some(env))
    }
}

/// 128 bytes that differ between jobs (std's randomly keyed hasher, the time and the process id).
fn fresh_id() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (0..UNIQUE_ID_BYTES / 8)
        .flat_map(|i| {
            let mut h = state.build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_usize(i);
            h.finish().to_le_bytes()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the rendezvous leaves each rank: the run's id and the open connections of the group.
#[derive(Debug)]
pub struct Rendezvous {
    /// The same hex id on every rank.
    pub id: String,
    /// Rank 0: the connections to ranks 1, 2, ... in rank order; any other rank: its connection to rank 0.
    /// Training exchanges its gradients over them (`coil_train::dist::TcpCollective`).
    pub links: Vec<TcpStream>,
}

/// Meets the other ranks: rank 0 listens on MASTER_ADDR:MASTER_PORT, every other rank connects (retrying until
/// `timeout`) and says its rank; once all have arrived rank 0 sends each the same id. The connections stay
/// open. Nothing else travels on them until every rank has its id, so the line reads below never buffer
/// bytes that belong to the exchanges after them.
pub fn rendezvous(env: &WorkerEnv, timeout: Duration) -> Result<Rendezvous> {
    let addr = format!("{}:{}", env.master_addr, env.master_port);
    let err = |m: String| RecipeError::Launch(format!("rendezvous at {addr}: {m}"));
    if env.world_size == 1 {
        return Ok(Rendezvous {
            id: hex(&fresh_id()),
            links: Vec::new(),
        });
    }
    let deadline = Instant::now() + timeout;
    if env.rank == 0 {
        let listener = TcpListener::bind(&addr).map_err(|e| err(format!("cannot listen: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err(e.to_string()))?;
        let mut peers: Vec<(usize, TcpStream)> = Vec::new();
        while peers.len() + 1 < env.world_size {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| err(e.to_string()))?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| err(e.to_string()))?;
                    let mut line = String::new();
                    BufReader::new(&mut s)
                        .read_line(&mut line)
                        .map_err(|e| err(e.to_string()))?;
                    let rank = line
                        .trim()
                        .strip_prefix(HELLO)
                        .and_then(|r| r.trim().parse::<usize>().ok())
                        .filter(|r| *r > 0 && *r < env.world_size)
                        .ok_or_else(|| err(format!("unexpected greeting {:?}", line.trim())))?;
                    if peers.iter().any(|(r, _)| *r == rank) {
                        return Err(err(format!("rank {rank} arrived twice")));
                    }
                    peers.push((rank, s));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(err(format!(
                            "only {} of {} ranks arrived within {timeout:?}",
                            peers.len() + 1,
                            env.world_size
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(e.to_string())),
            }
        }
        let id = hex(&fresh_id());
        for (_, s) in &mut peers {
            writeln!(s, "{id}").map_err(|e| err(e.to_string()))?;
        }
        peers.sort_by_key(|(r, _)| *r);
        Ok(Rendezvous {
            id,
            links: peers.into_iter().map(|(_, s)| s).collect(),
        })
    } else {
        let target = addr
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let mut stream = loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(err(format!("rank 0 not reachable within {timeout:?}: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        writeln!(stream, "{HELLO} {}", env.rank).map_err(|e| err(e.to_string()))?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| err(e.to_string()))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| err(e.to_string()))?;
        let id = line.trim().to_string();
        if id.len() != 2 * UNIQUE_ID_BYTES {
            return Err(err(format!(
                "rank 0 sent {} characters, expected {}",
                id.len(),
                2 * UNIQUE_ID_BYTES
            )));
        }
        Ok(Rendezvous {
            id,
            links: vec![stream],
        })
    }
}

/// A free TCP port on this machine (for `executor.master_port=0`).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| RecipeError::Launch(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| RecipeError::Launch(e.to_string()))
}

/// Starts `num_gpus_per_node` workers (`exe worker_args...`) on this machine with torchrun's environment,
/// prefixes each line they print with `[rank N]`, and waits for all. Errors when any worker fails. The caller
/// holds the run directory's lock; the workers learn so from `coil_train::lock::HELD_BY_ENV`.
pub fn run_local(recipe: &Recipe, exe: &Path, worker_args: &[String]) -> Result<()> {
    let p = &recipe.parallel;
    if p.num_nodes != 1 {
        return Err(RecipeError::Launch(format!(
            "the local executor runs on one machine; parallel.num_nodes is {} (use executor.kind=slurm)",
            p.num_nodes
        )));
    }
    let world = p.num_gpus_per_node;
    let port = match recipe.executor.master_port {
        0 => free_port()?,
        n => n,
    };
    let mut children = Vec::new();
    let mut pumps = Vec::new();
    for rank in 0..world {
        let mut child = Command::new(exe)
            .args(worker_args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", &recipe.executor.master_addr)
            .env("MASTER_PORT", port.to_string())
            // This process holds the run directory's lock for its workers.
            .env(
                coil_train::lock::HELD_BY_ENV,
                std::process::id().to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(exe))?;
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, format!("[rank {rank}] "), false));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, format!("[rank {rank}] "), true));
        }
        children.push((rank, child));
    }
    let mut failed = Vec::new();
    for (rank, mut child) in children {
        let status = child.wait().map_err(io(exe))?;
        if !status.success() {
            failed.push(format!("rank {rank} ({status})"));
        }
    }
    for t in pumps {
        let _ = t.join();
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(RecipeError::Launch(format!(
            "worker(s) failed: {}",
            failed.join(", ")
        )))
    }
}

fn pump<R: Read + Send + 'static>(
    r: R,
    prefix: String,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(|l| l.ok()) {
            if to_stderr {
                eprintln!("{prefix}{line}");
            } else {
                println!("{prefix}{line}");
            }
        }
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sbatch script for the recipe: num_nodes x num_gpus_per_node tasks, each a worker with torchrun's
/// environment derived from Slurm's.
pub fn sbatch_script(recipe: &Recipe, exe: &Path, plan: &Path) -> String {
    let p = &recipe.parallel;
    let e = &recipe.executor;
    let run_dir = recipe.run_dir();
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("#SBATCH --job-name=coil-{}\n", recipe.run.name);
    s += &format!("#SBATCH --nodes={}\n", p.num_nodes);
    s += &format!("#SBATCH --ntasks-per-node={}\n", p.num_gpus_per_node);
    s += &format!("#SBATCH --gpus-per-node={}\n", p.num_gpus_per_node);
    s += "#SBATCH --exclusive\n";
    if !e.time.is_empty() {
        s += &format!("#SBATCH --time={}\n", e.time);
    }
    if !e.account.is_empty() {
        s += &format!("#SBATCH --account={}\n", e.account);
    }
    if !e.partition.is_empty() {
        s += &format!("#SBATCH --partition={}\n", e.partition);
    }
    s += &format!("#SBATCH --output={}/slurm-%j.out\n\n", run_dir.display());
    s += "set -euo pipefail\n";
    s += "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n";
    s += &format!(
        "export MASTER_PORT={}\n",
        if e.master_port == 0 {
            29500
        } else {
            e.master_port
        }
    );
    s += &format!("export WORLD_SIZE={}\n", p.world_size());
    s += &format!("export LOCAL_WORLD_SIZE={}\n\n", p.num_gpus_per_node);
    s += &format!(
        "srun --kill-on-bad-exit=1 --label bash -c 'RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID exec \"$0\" worker --plan \"$1\"' {} {}\n",
        shell_quote(&exe.display().to_string()),
        shell_quote(&plan.display().to_string())
    );
    s
}

/// Writes the sbatch script into the run directory and submits it when `sbatch` is on PATH. Returns the script
/// path and whether it was submitted.
pub fn run_slurm(recipe: &Recipe, exe: &Path, plan: &Path) -> Result<(PathBuf, bool)> {
    let dir = recipe.run_dir();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let script = dir.join("coil.sbatch");
    std::fs::write(&script, sbatch_script(recipe, exe, plan)).map_err(io(&script))?;
    let has_sbatch = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join("sbatch").is_file()))
        .unwrap_or(false);
    if !has_sbatch {
        return Ok((script, false));
    }
    let status = Command::new("sbatch")
        .arg(&script)
        .status()
        .map_err(io("sbatch"))?;
    if !status.success() {
        return Err(RecipeError::Launch(format!(
            "sbatch {} failed ({status})",
            script.display()
        )));
    }
    Ok((script, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_rendezvous_on_one_id() {
        let port = free_port().unwrap_or(29555);
        let world = 3;
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                std::thread::spawn(move || {
                    let env = WorkerEnv {
                        rank,
                        local_rank: rank,
                        world_size: world,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                    };
                    rendezvous(&env, Duration::from_secs(20))
                })
            })
            .collect();
        let met: Vec<Rendezvous> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("thread"))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        assert_eq!(met[0].id.len(), 2 * UNIQUE_ID_BYTES);
        assert!(met.iter().all(|m| m.id == met[0].id));
        // rank 0 holds one link per other rank, in rank order; the others one link each
        assert_eq!(met[0].links.len(), world - 1);
        assert!(met[1..].iter().all(|m| m.links.len() == 1));
        for (r, m) in met.iter().enumerate().skip(1) {
            let theirs = m.links[0].local_addr().unwrap_or_else(|e| panic!("{e}"));
            let ours = met[0].links[r - 1]
                .peer_addr()
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(theirs, ours, "rank {r}'s link sits at position {}", r - 1);
        }
    }
}
