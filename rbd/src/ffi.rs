//! The part of librados' and librbd's C API strata uses (declarations after `librados.h` and
//! `librbd.h` of Ceph 16), resolved at run time from `librbd.so.1` (which pulls in
//! `librados.so.2`): a machine without Ceph's client libraries builds and runs strata, and only a
//! `format=rbd` request says what to install.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use blockdev::{Error, ErrorKind, Result};
use libloading::Library;

/// `rados_t`: a cluster handle.
pub type RadosT = *mut c_void;
/// `rados_ioctx_t`: an I/O context (a pool, a namespace).
pub type RadosIoctxT = *mut c_void;
/// `rbd_image_t`: an open image.
pub type RbdImageT = *mut c_void;
/// `rbd_completion_t`: one asynchronous request.
pub type RbdCompletionT = *mut c_void;
/// `rbd_callback_t`.
pub type RbdCallbackT = Option<unsafe extern "C" fn(RbdCompletionT, *mut c_void)>;

/// `RBD_LOCK_MODE_EXCLUSIVE` of `rbd_lock_acquire`.
pub const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;

/// The library names tried, in order.
const LIBRBD: &str = "librbd.so.1";
const LIBRADOS: &str = "librados.so.2";

/// What to tell a user whose machine lacks the libraries.
pub const INSTALL_HINT: &str =
    "install Ceph's client libraries: apt-get install librbd1 (Debian/Ubuntu) or dnf install librbd1 (Fedora/RHEL)";

macro_rules! api {
    ($( $lib:ident $name:ident : fn($($arg:ty),*) $(-> $ret:ty)? ;)*) => {
        /// The functions strata calls, resolved from the loaded libraries.
        #[allow(non_snake_case)]
        pub struct Api {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,
            )*
            _librbd: Library,
            _librados: Library,
        }

        impl Api {
            fn load() -> std::result::Result<Api, String> {
                // SAFETY: loading Ceph's client libraries runs their initialisers, which have no
                // preconditions on our side.
                let librados = unsafe { Library::new(LIBRADOS) }.map_err(|e| format!("{LIBRADOS}: {e}"))?;
                // SAFETY: as above.
                let librbd = unsafe { Library::new(LIBRBD) }.map_err(|e| format!("{LIBRBD}: {e}"))?;
                Ok(Api {
                    $(
                        // SAFETY: the symbol is declared above with the signature of the C header;
                        // the function pointer is only used while the library (kept in `Api`)
                        // stays loaded, which is forever (`Api` lives in a static).
                        $name: unsafe {
                            *api!(@lib $lib, librbd, librados)
                                .get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(concat!(stringify!($name), "\0").as_bytes())
                                .map_err(|e| format!("{}: {e}", stringify!($name)))?
                        },
                    )*
                    _librbd: librbd,
                    _librados: librados,
                })
            }
        }
    };
    (@lib rbd, $rbd:ident, $rados:ident) => { $rbd };
    (@lib rados, $rbd:ident, $rados:ident) => { $rados };
}

api! {
    rados rados_create: fn(*mut RadosT, *const c_char) -> c_int;
    rados rados_conf_read_file: fn(RadosT, *const c_char) -> c_int;
    rados rados_conf_set: fn(RadosT, *const c_char, *const c_char) -> c_int;
    rados rados_conf_get: fn(RadosT, *const c_char, *mut c_char, usize) -> c_int;
    rados rados_connect: fn(RadosT) -> c_int;
    rados rados_shutdown: fn(RadosT);
    rados rados_ioctx_create: fn(RadosT, *const c_char, *mut RadosIoctxT) -> c_int;
    rados rados_ioctx_destroy: fn(RadosIoctxT);
    rados rados_ioctx_set_namespace: fn(RadosIoctxT, *const c_char);
    rbd rbd_open: fn(RadosIoctxT, *const c_char, *mut RbdImageT, *const c_char) -> c_int;
    rbd rbd_open_read_only: fn(RadosIoctxT, *const c_char, *mut RbdImageT, *const c_char) -> c_int;
    rbd rbd_close: fn(RbdImageT) -> c_int;
    rbd rbd_get_size: fn(RbdImageT, *mut u64) -> c_int;
    rbd rbd_get_stripe_unit: fn(RbdImageT, *mut u64) -> c_int;
    rbd rbd_lock_acquire: fn(RbdImageT, c_int) -> c_int;
    rbd rbd_lock_release: fn(RbdImageT) -> c_int;
    rbd rbd_aio_create_completion: fn(*mut c_void, RbdCallbackT, *mut RbdCompletionT) -> c_int;
    rbd rbd_aio_get_return_value: fn(RbdCompletionT) -> isize;
    rbd rbd_aio_release: fn(RbdCompletionT);
    rbd rbd_aio_readv: fn(RbdImageT, *const libc::iovec, c_int, u64, RbdCompletionT) -> c_int;
    rbd rbd_aio_writev: fn(RbdImageT, *const libc::iovec, c_int, u64, RbdCompletionT) -> c_int;
    rbd rbd_aio_flush: fn(RbdImageT, RbdCompletionT) -> c_int;
    rbd rbd_aio_discard: fn(RbdImageT, u64, u64, RbdCompletionT) -> c_int;
    rbd rbd_aio_write_zeroes: fn(RbdImageT, u64, usize, RbdCompletionT, c_int, c_int) -> c_int;
}

/// The loaded API, loading the libraries on first use. The error says what is missing and how to
/// install it.
pub fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    match API.get_or_init(Api::load) {
        Ok(api) => Ok(api),
        Err(why) => Err(Error::new(
            ErrorKind::Unsupported,
            format!("format=rbd needs Ceph's client library, which cannot be loaded ({why}): {INSTALL_HINT}"),
        )),
    }
}
