//! Load while something else happens: a closure (typically one request through nginx) run in a
//! loop on its own thread until stopped, every result kept.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Runs `f(1)`, `f(2)`, ... on its own thread until `finish` (or drop), keeping every result.
pub struct Looper<T> {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<T>>>,
    handle: Option<JoinHandle<()>>,
}

impl<T: Clone + Send + 'static> Looper<T> {
    pub fn start(mut f: impl FnMut(u64) -> T + Send + 'static) -> Looper<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&results));
        let handle = thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let result = f(i);
                r.lock().unwrap().push(result);
            }
        });
        Looper {
            stop,
            results,
            handle: Some(handle),
        }
    }

    /// Results so far.
    pub fn count(&self) -> usize {
        self.results.lock().unwrap().len()
    }

    /// Results so far for which `pred` holds.
    pub fn count_where(&self, pred: impl Fn(&T) -> bool) -> usize {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    /// Waits (5 s at most) until `n` more results have come.
    pub fn wait_more(&self, n: usize) {
        let target = self.count() + n;
        super::wait_until(
            Duration::from_secs(5),
            &format!("{n} more client requests"),
            || self.count() >= target,
        );
    }

    /// Stops the loop (after the current call) and returns every result, in order.
    pub fn finish(mut self) -> Vec<T> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("client thread");
        }
        let r = self.results.lock().unwrap();
        r.clone()
    }
}

impl<T> Drop for Looper<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
