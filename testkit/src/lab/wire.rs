//! A userspace link impairment for the lab (the kernel here has no `tc
//! netem`): frames copied between two interfaces of a namespace through
//! AF_PACKET sockets, each held for a delay and a fraction dropped.

use std::sync::atomic::Ordering;

/// A userspace link impairment (the kernel here has no `tc netem`): two
/// threads, one per direction, copy Ethernet frames between two interfaces
/// of a namespace through AF_PACKET sockets, holding each frame for `delay`
/// and dropping a `loss` fraction at random.
pub struct Impairment {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Impairment {
    pub fn start(ns: &str, a: &str, b: &str, delay: std::time::Duration, loss: f64) -> Impairment {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = [(a, b), (b, a)]
            .into_iter()
            .enumerate()
            .map(|(i, (from, to))| {
                let (ns, from, to, stop) = (
                    ns.to_string(),
                    from.to_string(),
                    to.to_string(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    forward(&ns, &from, &to, delay, loss, 0x9e37_79b9 + i as u64, &stop)
                })
            })
            .collect();
        Impairment { stop, threads }
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Joins network namespace `ns` (this thread only).
pub fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A raw AF_PACKET socket bound to interface `name`, non-blocking.
fn packet_socket(name: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls on values we own; the fd is wrapped at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            proto as i32,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let cname = std::ffi::CString::new(name).unwrap();
        let index = libc::if_nametoindex(cname.as_ptr());
        assert!(index > 0, "no interface {name}");
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        let rc = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind {name}: {}", std::io::Error::last_os_error());
        owned
    }
}

fn forward(
    ns: &str,
    from: &str,
    to: &str,
    delay: std::time::Duration,
    loss: f64,
    mut seed: u64,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::os::fd::AsRawFd;
    use std::time::Instant;
    enter_netns(ns);
    let rx = packet_socket(from);
    let tx = packet_socket(to);
    let mut queue: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, frame) = queue.pop_front().unwrap();
            // SAFETY: sending a buffer we own on a socket we own.
            unsafe { libc::send(tx.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        }
        let wait_ms = queue
            .front()
            .map(|(due, _)| due.saturating_duration_since(now).as_millis() as i32 + 1)
            .unwrap_or(20)
            .min(20);
        let mut pfd = libc::pollfd {
            fd: rx.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, wait_ms) } <= 0 {
            continue;
        }
        loop {
            // SAFETY: receiving into our buffer; `from` is a sockaddr_ll.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    rx.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut addr as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n <= 0 {
                break;
            }
            // Our own sends on this interface come back as outgoing.
            if addr.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if (seed % 10_000) as f64 / 10_000.0 < loss {
                continue;
            }
            queue.push_back((Instant::now() + delay, buf[..n as usize].to_vec()));
        }
    }
}
