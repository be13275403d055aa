//! The NVIDIA libraries asked directly, at run time (`dlopen` through libloading), instead of
//! parsing `nvidia-smi` output or library file names:
//! - the CUDA driver API in `libcuda.so.1` (installed with the NVIDIA driver): `cuInit`,
//!   `cuDeviceGetCount`, `cuDeviceGet`, `cuDeviceGetName`, `cuDeviceGetAttribute` (compute
//!   capability, attributes 75 / 76), `cuDriverGetVersion`, `cuGetErrorName`. Device ordinals
//!   honour `CUDA_VISIBLE_DEVICES` exactly as ONNX Runtime's `device_id` does (nvidia-smi's
//!   index does not).
//! - TensorRT's `getInferLibVersion()` from `libnvinfer.so.10` (else `libnvinfer.so`), the
//!   library ONNX Runtime's TensorRT provider links, as the onnxruntime-gpu 1.31.1 wheel's
//!   `libonnxruntime_providers_tensorrt.so` records (major·10000 + minor·100 + patch).
//!
//! The libraries stay loaded for the life of the process (ONNX Runtime's CUDA and TensorRT
//! providers load the same ones). The declarations mirror `cuda.h` and `NvInferRuntime.h`;
//! everything that does not need the libraries is a pure function tested here.

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::sync::OnceLock;

use libloading::Library;

use crate::error::{EngineError, Result};

/// The CUDA driver library's name, as the dynamic loader finds it.
pub const CUDA_DRIVER_LIBRARY: &str = "libcuda.so.1";

/// TensorRT's runtime library names, in the order they are tried.
pub const TENSORRT_LIBRARIES: [&str; 2] = ["libnvinfer.so.10", "libnvinfer.so"];

const CUDA_SUCCESS: c_int = 0;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// One GPU as the CUDA driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDevice {
    /// The CUDA ordinal (what ONNX Runtime's `device_id` means).
    pub ordinal: usize,
    /// The product name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (u32, u32),
    /// The CUDA version the driver supports, `(major, minor)`.
    pub driver_cuda: (u32, u32),
}

impl CudaDevice {
    /// `9.0`: the compute capability as engine records write it.
    pub fn compute_capability_string(&self) -> String {
        compute_capability(self.compute_capability.0, self.compute_capability.1)
    }
}

/// `major.minor`, the usual spelling of a compute capability (`(8, 9)` → `8.9`).
pub fn compute_capability(major: u32, minor: u32) -> String {
    format!("{major}.{minor}")
}

/// `cuDriverGetVersion`'s `1000·major + 10·minor` as `(major, minor)` (13000 → (13, 0)).
pub fn driver_cuda_version(v: i32) -> (u32, u32) {
    let v = v.max(0).unsigned_abs();
    (v / 1000, (v % 1000) / 10)
}

/// A device name from the buffer `cuDeviceGetName` filled: up to the first NUL, trimmed.
pub fn device_name(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_string()
}

type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuGetErrorName = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
type GetInferLibVersion = unsafe extern "C" fn() -> i32;

fn open(name: &str) -> std::result::Result<Library, String> {
    // SAFETY: loading a shared library runs its initialisers; the CUDA driver and TensorRT are
    // the libraries ONNX Runtime's providers load into this process anyway.
    unsafe { Library::new(name) }.map_err(|e| describe(&e))
}

/// libloading's message with its source (the `dlerror()` text, which names the file).
fn describe(e: &libloading::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// The CUDA driver, loaded once per process.
fn cuda_driver() -> Result<&'static Library> {
    static DRIVER: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| open(CUDA_DRIVER_LIBRARY))
        .as_ref()
        .map_err(|reason| EngineError::CudaDriverMissing {
            reason: reason.clone(),
        })
}

fn symbol<T: Copy>(lib: &Library, library: &str, name: &str) -> Result<T> {
    // SAFETY: every `T` used here is the C signature `cuda.h` / `NvInferRuntime.h` declare for
    // `name`.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| EngineError::Device(format!("{library} has no `{name}`: {}", describe(&e))))
}

/// The GPU with CUDA ordinal `ordinal`, from the CUDA driver.
pub fn cuda_device(ordinal: usize) -> Result<CudaDevice> {
    let lib = cuda_driver()?;
    let cu_init: CuInit = symbol(lib, CUDA_DRIVER_LIBRARY, "cuInit")?;
    let cu_count: CuDeviceGetCount = symbol(lib, CUDA_DRIVER_LIBRARY, "cuDeviceGetCount")?;
    let cu_get: CuDeviceGet = symbol(lib, CUDA_DRIVER_LIBRARY, "cuDeviceGet")?;
    let cu_name: CuDeviceGetName = symbol(lib, CUDA_DRIVER_LIBRARY, "cuDeviceGetName")?;
    let cu_attr: CuDeviceGetAttribute = symbol(lib, CUDA_DRIVER_LIBRARY, "cuDeviceGetAttribute")?;
    let cu_version: CuDriverGetVersion = symbol(lib, CUDA_DRIVER_LIBRARY, "cuDriverGetVersion")?;
    let cu_error: Option<CuGetErrorName> = symbol(lib, CUDA_DRIVER_LIBRARY, "cuGetErrorName").ok();
    let check = |call: &'static str, code: c_int| -> Result<()> {
        if code == CUDA_SUCCESS {
            return Ok(());
        }
        let name = cu_error
            .and_then(|f| {
                let mut p: *const c_char = std::ptr::null();
                // SAFETY: `p` is a local out-pointer; the driver returns a static string.
                let ok = unsafe { f(code, &mut p) } == CUDA_SUCCESS && !p.is_null();
                // SAFETY: non-null, NUL-terminated, static per the driver API.
                ok.then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "unknown CUresult".into());
        Err(EngineError::CudaCall { call, code, name })
    };
    // SAFETY (all calls below): out-pointers are locals or a buffer of the length passed;
    // the signatures are `cuda.h`'s.
    check("cuInit", unsafe { cu_init(0) })?;
    let mut driver = 0;
    check("cuDriverGetVersion", unsafe { cu_version(&mut driver) })?;
    let mut count = 0;
    check("cuDeviceGetCount", unsafe { cu_count(&mut count) })?;
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let no_such = || EngineError::NoSuchGpu {
        ordinal,
        count: count.max(0).unsigned_abs(),
        visible: visible.clone(),
    };
    let ord = c_int::try_from(ordinal).map_err(|_| no_such())?;
    if ord >= count {
        return Err(no_such());
    }
    let mut dev = 0;
    check("cuDeviceGet", unsafe { cu_get(&mut dev, ord) })?;
    let mut buf = [0u8; 256];
    check("cuDeviceGetName", unsafe {
        cu_name(buf.as_mut_ptr().cast(), buf.len() as c_int, dev)
    })?;
    let (mut major, mut minor) = (0, 0);
    check("cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)", unsafe {
        cu_attr(
            &mut major,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            dev,
        )
    })?;
    check("cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR)", unsafe {
        cu_attr(
            &mut minor,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            dev,
        )
    })?;
    Ok(CudaDevice {
        ordinal,
        name: device_name(&buf),
        compute_capability: (major.max(0).unsigned_abs(), minor.max(0).unsigned_abs()),
        driver_cuda: driver_cuda_version(driver),
    })
}

/// TensorRT's library, loaded once per process: the first of [`TENSORRT_LIBRARIES`] the
/// dynamic loader finds, with its name.
fn tensorrt_library() -> Result<&'static (&'static str, Library)> {
    static TRT: OnceLock<std::result::Result<(&'static str, Library), Vec<String>>> =
        OnceLock::new();
    TRT.get_or_init(|| {
        let mut failures = vec![];
        for name in TENSORRT_LIBRARIES {
            match open(name) {
                Ok(lib) => return Ok((name, lib)),
                Err(e) => failures.push(e),
            }
        }
        Err(failures)
    })
    .as_ref()
    .map_err(|failures| EngineError::TensorRtMissing {
        tried: failures.join("; "),
    })
}

/// The raw `getInferLibVersion()` of the TensorRT library the dynamic loader finds, with the
/// library's name.
pub fn tensorrt_library_version() -> Result<(&'static str, i32)> {
    let (name, lib) = tensorrt_library()?;
    let f: GetInferLibVersion = symbol(lib, name, "getInferLibVersion")?;
    // SAFETY: `int32_t getInferLibVersion() noexcept`, no arguments, no preconditions.
    Ok((name, unsafe { f() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_driver_values() {
        assert_eq!(compute_capability(9, 0), "9.0");
        assert_eq!(compute_capability(12, 1), "12.1");
        assert_eq!(driver_cuda_version(13000), (13, 0));
        assert_eq!(driver_cuda_version(12090), (12, 9));
        assert_eq!(driver_cuda_version(-1), (0, 0));
        let mut buf = [0u8; 32];
        buf[..16].copy_from_slice(b"NVIDIA L40S\0junk");
        assert_eq!(device_name(&buf), "NVIDIA L40S");
        assert_eq!(
            device_name(b"NVIDIA H100 80GB HBM3 "),
            "NVIDIA H100 80GB HBM3"
        );
        assert_eq!(device_name(&[0; 8]), "");
        let d = CudaDevice {
            ordinal: 0,
            name: "NVIDIA H100".into(),
            compute_capability: (9, 0),
            driver_cuda: (13, 0),
        };
        assert_eq!(d.compute_capability_string(), "9.0");
    }

    #[test]
    fn a_missing_library_is_an_error_not_a_crash() {
        let e = open("libhyvideo-absent-test.so.1").unwrap_err();
        assert!(e.contains("libhyvideo-absent-test.so.1"), "{e}");
    }

    /// Without a driver (this CI machine) the error names the library and what provides it;
    /// with one, GPU 0 is described.
    #[test]
    fn cuda_device_or_an_error_naming_the_driver() {
        match cuda_device(0) {
            Err(EngineError::CudaDriverMissing { .. }) => {
                let msg = cuda_device(0).unwrap_err().to_string();
                assert!(
                    msg.contains("libcuda.so.1") && msg.contains("NVIDIA driver"),
                    "{msg}"
                );
            }
            Err(e @ (EngineError::CudaCall { .. } | EngineError::NoSuchGpu { .. })) => {
                // A driver without a usable GPU 0: the error names the call or the count.
                assert!(!e.to_string().is_empty());
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(d) => {
                assert!(!d.name.is_empty() && d.compute_capability.0 >= 3, "{d:?}");
                let e = cuda_device(usize::MAX).unwrap_err().to_string();
                assert!(e.contains("does not exist"), "{e}");
            }
        }
    }

    #[test]
    fn tensorrt_version_or_an_error_saying_where_to_get_it() {
        match tensorrt_library_version() {
            Err(e @ EngineError::TensorRtMissing { .. }) => {
                let msg = e.to_string();
                for needle in [
                    "libnvinfer.so.10",
                    "LD_LIBRARY_PATH",
                    "ld.so.cache",
                    "tensorrt-cu13-libs",
                    "site-packages/tensorrt_libs",
                ] {
                    assert!(msg.contains(needle), "{needle} missing from: {msg}");
                }
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok((name, v)) => assert!(TENSORRT_LIBRARIES.contains(&name) && v > 0, "{v}"),
        }
    }
}
