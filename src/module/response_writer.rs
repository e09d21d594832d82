//! A response written as it is rendered: a `fmt::Write` that fills 64 KiB buffers from the
//! request pool and passes each full one down nginx's output filters, reusing the ones already
//! sent. A body that fits in the first buffer goes with a `Content-Length`; a longer one is
//! chunked (or ends with the connection, for HTTP/1.0).

use core::fmt;
use core::mem::size_of;
use core::ptr;

use ngx::ffi::{
    ngx_alloc_chain_link, ngx_buf_t, ngx_chain_get_free_buf, ngx_chain_t, ngx_chain_update_chains,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_palloc,
    ngx_pcalloc, ngx_str_t, off_t, NGX_AGAIN, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_OK,
};

use crate::module::Module;
use ngx::http::HttpModule;

/// Size of one body buffer.
const CHUNK: usize = 64 * 1024;

/// Buffers that may wait for a slow client before rendering pauses.
const MAX_BUSY: usize = 4;

pub struct BodyWriter {
    r: *mut ngx_http_request_t,
    status: usize,
    content_type: &'static str,
    /// The header went out (with the first buffer).
    header_sent: bool,
    /// The header's send ended the response (an error, or nothing more to send).
    stopped: bool,
    /// Buffers sent and free again.
    free: *mut ngx_chain_t,
    /// Buffers passed down and not sent yet.
    busy: *mut ngx_chain_t,
    /// The buffer being filled, null between buffers.
    current: *mut ngx_chain_t,
    /// What the last pass down the filters returned.
    rc: ngx_int_t,
}

impl BodyWriter {
    /// # Safety
    /// `r` must be a live request in its content phase whose header is not sent yet.
    pub unsafe fn new(
        r: *mut ngx_http_request_t,
        status: usize,
        content_type: &'static str,
    ) -> BodyWriter {
        BodyWriter {
            r,
            status,
            content_type,
            header_sent: false,
            stopped: false,
            free: ptr::null_mut(),
            busy: ptr::null_mut(),
            current: ptr::null_mut(),
            rc: NGX_OK as ngx_int_t,
        }
    }

    fn tag() -> *mut core::ffi::c_void {
        Module::module() as *const _ as *mut core::ffi::c_void
    }

    /// The buffer being filled, with room for at least one byte.
    fn room(&mut self) -> Result<*mut ngx_buf_t, fmt::Error> {
        // SAFETY: current is null or a link this writer took from the pool; its buffer's
        // pointers are start <= pos <= last <= end.
        unsafe {
            if let Some(cl) = self.current.as_ref() {
                let b = cl.buf;
                if (*b).last < (*b).end {
                    return Ok(b);
                }
                self.pass(false)?;
            }
            let pool = (*self.r).pool;
            let cl = ngx_chain_get_free_buf(pool, &mut self.free);
            if cl.is_null() || (*cl).buf.is_null() {
                return Err(fmt::Error);
            }
            let b = (*cl).buf;
            if (*b).start.is_null() {
                let mem = ngx_palloc(pool, CHUNK) as *mut u8;
                if mem.is_null() {
                    return Err(fmt::Error);
                }
                (*b).start = mem;
                (*b).end = mem.add(CHUNK);
                (*b).set_temporary(1);
                (*b).tag = Self::tag();
            }
            (*b).pos = (*b).start;
            (*b).last = (*b).start;
            self.current = cl;
            Ok(b)
        }
    }

    /// Passes the current buffer down the filters, the last one of the body when `last`.
    fn pass(&mut self, last: bool) -> fmt::Result {
        // SAFETY: r is live (per `new`); current is a link of this writer's, handed to the
        // filters and then kept in busy until sent, as nginx's own filters do.
        unsafe {
            let mut out = self.current;
            self.current = ptr::null_mut();
            if out.is_null() {
                if !last {
                    return Ok(());
                }
                // The body ends with a last buffer even when nothing is left: an empty one
                // without memory, which the filters take as the end mark.
                let pool = (*self.r).pool;
                out = ngx_alloc_chain_link(pool);
                let b = ngx_pcalloc(pool, size_of::<ngx_buf_t>()) as *mut ngx_buf_t;
                if out.is_null() || b.is_null() {
                    return Err(fmt::Error);
                }
                (*out).buf = b;
                (*out).next = ptr::null_mut();
            }
            if !self.header_sent {
                self.header_sent = true;
                // The whole body is in this one buffer when it is the last.
                let b = (*out).buf;
                let length = if (*b).pos.is_null() {
                    0
                } else {
                    (*b).last.offset_from((*b).pos) as usize
                };
                let rc = send_header(
                    self.r,
                    self.status,
                    self.content_type,
                    last.then_some(length),
                );
                if rc == NGX_ERROR as ngx_int_t
                    || rc > NGX_OK as ngx_int_t
                    || (*self.r).header_only() != 0
                {
                    self.rc = rc;
                    self.stopped = true;
                    return Err(fmt::Error);
                }
            }
            if last {
                let b = (*out).buf;
                if ptr::eq((*self.r).main, self.r) {
                    (*b).set_last_buf(1);
                }
                (*b).set_last_in_chain(1);
            }
            self.filter(out);
        }
        if self.rc == NGX_ERROR as ngx_int_t {
            return Err(fmt::Error);
        }
        Ok(())
    }

    /// The client is behind: the last pass could not send everything and `MAX_BUSY` buffers
    /// wait to be sent. Rendering more now would only pile up memory.
    pub fn behind(&self) -> bool {
        if self.rc != NGX_AGAIN as ngx_int_t {
            return false;
        }
        let mut n = 0;
        let mut cl = self.busy;
        // SAFETY: busy is a chain of this writer's links, null-terminated.
        while let Some(link) = unsafe { cl.as_ref() } {
            n += 1;
            cl = link.next;
        }
        n >= MAX_BUSY
    }

    /// Sends what the filters kept back (on a write event of a client that was behind).
    pub fn flush(&mut self) -> ngx_int_t {
        // SAFETY: r is live (per `new`); passing no new data flushes the filters' own queue.
        unsafe { self.filter(ptr::null_mut()) };
        self.rc
    }

    /// Passes `out` (null: nothing new) down the output filters and moves the buffers they
    /// are done with back to `free`.
    ///
    /// # Safety
    /// The request must be live; `out` must be null or a chain of this writer's links.
    unsafe fn filter(&mut self, mut out: *mut ngx_chain_t) {
        // SAFETY: per the contract.
        unsafe {
            self.rc = ngx_http_output_filter(self.r, out);
            ngx_chain_update_chains(
                (*self.r).pool,
                &mut self.free,
                &mut self.busy,
                &mut out,
                Self::tag(),
            );
        }
    }

    /// Ends the response after the page was rendered (`rendered`) and returns what the content
    /// handler returns.
    pub fn finish(&mut self, rendered: fmt::Result) -> ngx_int_t {
        if self.stopped {
            return self.rc;
        }
        if rendered.is_err() {
            // Before the header: a clean 500; after it, only closing the connection tells the
            // client the body is incomplete.
            return if self.header_sent {
                NGX_ERROR as ngx_int_t
            } else {
                NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
            };
        }
        match self.pass(true) {
            Ok(()) => self.rc,
            Err(_) if self.stopped => self.rc,
            Err(_) => NGX_ERROR as ngx_int_t,
        }
    }
}

impl fmt::Write for BodyWriter {
    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // SAFETY: current is null or a link of this writer's whose buffer has
        // start <= last <= end.
        unsafe {
            if let Some(cl) = self.current.as_ref() {
                let b = cl.buf;
                if ((*b).end.offset_from((*b).last) as usize) >= s.len() {
                    ptr::copy_nonoverlapping(s.as_ptr(), (*b).last, s.len());
                    (*b).last = (*b).last.add(s.len());
                    return Ok(());
                }
            }
        }
        self.write_spanning(s)
    }
}

impl BodyWriter {
    /// `write_str` for text that does not fit in the current buffer.
    fn write_spanning(&mut self, s: &str) -> fmt::Result {
        let mut s = s.as_bytes();
        while !s.is_empty() {
            let b = self.room()?;
            // SAFETY: room returned a buffer with last < end, all inside its allocation.
            unsafe {
                let n = ((*b).end.offset_from((*b).last) as usize).min(s.len());
                ptr::copy_nonoverlapping(s.as_ptr(), (*b).last, n);
                (*b).last = (*b).last.add(n);
                s = &s[n..];
            }
        }
        Ok(())
    }
}

/// Sets the status and headers and sends them; `length` is the body's, `None` when unknown
/// (the body is then chunked).
///
/// # Safety
/// `r` must be a live request in its content phase.
pub unsafe fn send_header(
    r: *mut ngx_http_request_t,
    status: usize,
    content_type: &'static str,
    length: Option<usize>,
) -> ngx_int_t {
    // SAFETY: per the contract.
    unsafe {
        let req = &mut *r;
        req.headers_out.status = status;
        req.headers_out.content_length_n = length.map_or(-1, |n| n as off_t);
        req.headers_out.content_type = ngx_str_t {
            len: content_type.len(),
            data: content_type.as_ptr() as *mut u8,
        };
        req.headers_out.content_type_len = content_type.len();
        req.headers_out.content_type_lowcase = ptr::null_mut();
        ngx_http_send_header(r)
    }
}

/// A `fmt::Write` that only counts bytes: the length of a page without writing it.
#[derive(Default)]
pub struct Counter(pub usize);

impl fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}
