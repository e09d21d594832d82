//! Shared memory zones: finding one by name among a cycle's, and their lock (the slab pool's
//! mutex, which the master force-unlocks if a worker dies holding it).

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_cycle_t, ngx_list_part_t, ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_trylock,
    ngx_shmtx_unlock, ngx_slab_pool_t,
};

/// The zone named `name` in `cycle`'s shared memory list, with tag `tag` when given, other
/// than `except` (the zone being initialized, when looking for the previous cycle's).
///
/// # Safety
/// `cycle` must be a live cycle (or nginx's zeroed init cycle, whose list is empty).
pub unsafe fn find_zone(
    cycle: *const ngx_cycle_t,
    name: &str,
    tag: Option<*mut c_void>,
    except: *const ngx_shm_zone_t,
) -> Option<&'static ngx_shm_zone_t> {
    // SAFETY: per the contract; list parts hold nelts zones and form a null-terminated chain,
    // mapped for the cycle's life.
    unsafe {
        let mut part: *const ngx_list_part_t = &(*cycle).shared_memory.part;
        while let Some(p) = part.as_ref() {
            if !p.elts.is_null() {
                let zones = core::slice::from_raw_parts(p.elts as *const ngx_shm_zone_t, p.nelts);
                let found = zones.iter().find(|z| {
                    tag.map_or(true, |t| z.tag == t)
                        && !ptr::eq(*z, except)
                        && z.shm.name.as_bytes() == name.as_bytes()
                });
                if found.is_some() {
                    return found;
                }
            }
            part = p.next;
        }
    }
    None
}

/// Holds a zone's lock until dropped.
pub struct ShmLock {
    shpool: *mut ngx_slab_pool_t,
}

impl ShmLock {
    /// Takes the lock of the zone whose slab pool is `shpool`.
    ///
    /// # Safety
    /// `shpool` must be a zone's slab pool, mapped for as long as the guard lives.
    pub unsafe fn lock(shpool: *mut ngx_slab_pool_t) -> ShmLock {
        // SAFETY: per the contract.
        unsafe { ngx_shmtx_lock(&mut (*shpool).mutex) };
        ShmLock { shpool }
    }

    /// Tries the lock for up to `limit_ms`; `None` when a process holds it longer (or died
    /// holding it).
    ///
    /// # Safety
    /// As for `lock`.
    pub unsafe fn try_for(shpool: *mut ngx_slab_pool_t, limit_ms: u64) -> Option<ShmLock> {
        for waited in 0..=limit_ms {
            // SAFETY: per the contract.
            if unsafe { ngx_shmtx_trylock(&mut (*shpool).mutex) } != 0 {
                return Some(ShmLock { shpool });
            }
            if waited < limit_ms {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        None
    }
}

impl Drop for ShmLock {
    fn drop(&mut self) {
        // SAFETY: this guard holds the lock of this mapped pool.
        unsafe { ngx_shmtx_unlock(&mut (*self.shpool).mutex) };
    }
}
