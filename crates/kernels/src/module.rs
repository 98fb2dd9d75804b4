//! Loading the embedded cubins into a device's context, once per device and function.

use candle_core::cuda_backend::cudarc::driver::result;
use candle_core::cuda_backend::cudarc::driver::sys::{
    CUfunction_attribute_enum, CUmemPool_attribute,
};
use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, DriverError,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Why a kernel did not run.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The GPU (or these sizes) has no kernel here; the caller should take its portable path.
    #[error("{0}")]
    Unsupported(String),
    /// The arguments do not describe valid memory for the kernel (a bug in the caller).
    #[error("{kernel}: {what}")]
    Invalid { kernel: &'static str, what: String },
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("cuBLAS: {0}")]
    Blas(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// The element type of the activations a prefill kernel reads and writes (its arithmetic is f32 either way):
/// f32, or bf16 for a bf16 layer, whose in_proj output is read as it is. `SUFFIX` picks the kernel instance.
pub trait Act: candle_core::cuda_backend::cudarc::driver::DeviceRepr + Copy {
    const SUFFIX: &'static str;
}
impl Act for f32 {
    const SUFFIX: &'static str = "";
}
impl Act for half::bf16 {
    const SUFFIX: &'static str = "_bf16";
}

/// The cubins of one kernel source: for compute capability 8.x (absent for Hopper-only sources) and 9.0.
pub(crate) struct Cubins {
    name: &'static str,
    sm80: Option<&'static [u8]>,
    sm90: &'static [u8],
}

macro_rules! cubin {
    ($name:literal, $arch:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".sm", $arch, ".cubin"))
    };
}

/// The mma.sync SSD forward (sm_80 and sm_90 builds).
pub(crate) static SSD_FWD: Cubins = Cubins {
    name: "ssd_fwd",
    sm80: Some(cubin!("ssd_fwd", "80")),
    sm90: cubin!("ssd_fwd", "90"),
};
/// The single-token decode kernels.
pub(crate) static DECODE: Cubins = Cubins {
    name: "decode",
    sm80: Some(cubin!("decode", "80")),
    sm90: cubin!("decode", "90"),
};
/// The prefill's causal conv1d + SiLU.
pub(crate) static CONV1D: Cubins = Cubins {
    name: "conv1d",
    sm80: Some(cubin!("conv1d", "80")),
    sm90: cubin!("conv1d", "90"),
};
/// The prefill's gated RMSNorm.
pub(crate) static GATED_NORM: Cubins = Cubins {
    name: "gated_norm",
    sm80: Some(cubin!("gated_norm", "80")),
    sm90: cubin!("gated_norm", "90"),
};
/// The single-token attention decode kernels of the hybrid models.
pub(crate) static ATTN_DECODE: Cubins = Cubins {
    name: "attn_decode",
    sm80: Some(cubin!("attn_decode", "80")),
    sm90: cubin!("attn_decode", "90"),
};
/// The wgmma SSD forward (sm_90a only).
pub(crate) static SSD_FWD_SM90: Cubins = Cubins {
    name: "ssd_fwd_sm90",
    sm80: None,
    sm90: cubin!("ssd_fwd_sm90", "90a"),
};

impl Cubins {
    /// The cubin that runs on compute capability (major, minor).
    fn for_arch(&self, (major, minor): (i32, i32)) -> Result<&'static [u8]> {
        match (major, self.sm80) {
            (8, Some(image)) => Ok(image),
            (9, _) if minor == 0 => Ok(self.sm90),
            _ => Err(KernelError::Unsupported(format!(
                "no {} kernel for compute capability {major}.{minor} in this build",
                self.name
            ))),
        }
    }
}

/// Loaded modules and functions, keyed by device ordinal.
#[derive(Default)]
struct Loaded {
    modules: HashMap<(usize, &'static str), Arc<CudaModule>>,
    functions: HashMap<(usize, String), CudaFunction>,
}

fn cache() -> &'static Mutex<Loaded> {
    static CACHE: OnceLock<Mutex<Loaded>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// `function` of the `cubins` module on `ctx`'s device, loaded once per device, with its dynamic shared memory
/// limit raised to `smem_bytes`.
pub(crate) fn function(
    ctx: &Arc<CudaContext>,
    cubins: &'static Cubins,
    function: &str,
    smem_bytes: u32,
) -> Result<CudaFunction> {
    let ordinal = ctx.ordinal();
    let mut loaded = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = loaded.functions.get(&(ordinal, function.to_string())) {
        return Ok(f.clone());
    }
    let module = match loaded.modules.get(&(ordinal, cubins.name)) {
        Some(m) => m.clone(),
        None => {
            let image = cubins.for_arch(ctx.compute_capability()?)?;
            let m = ctx.load_module(Ptx::from_binary(image.to_vec()))?;
            loaded.modules.insert((ordinal, cubins.name), m.clone());
            m
        }
    };
    let f = module.load_function(function)?;
    f.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        smem_bytes as i32,
    )?;
    loaded
        .functions
        .insert((ordinal, function.to_string()), f.clone());
    Ok(f)
}

/// Keeps memory freed on `ctx`'s device in its stream-ordered pool instead of handing it back to the driver at
/// every synchronisation (the pool's default release threshold is 0). candle allocates every op's output with
/// `cuMemAllocAsync`; with the default, a loop that synchronises each iteration (a timed benchmark, a training
/// step that reads its loss) maps fresh memory for every large tensor again, at a cost that grows with its size.
/// Measured on the H200: 0.14 ms of 0.58 ms per NH-8B SSD forward at 1x8192. PyTorch's caching allocator keeps
/// freed blocks the same way.
pub fn keep_freed_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    ctx.bind_to_thread()?;
    let mut threshold = u64::MAX;
    // SAFETY: the device handle comes from a live context bound to this thread, and the release threshold
    // attribute takes a pointer to a u64, which `threshold` is.
    unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device())?;
        result::mem_pool::set_attribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )?;
    }
    Ok(())
}
