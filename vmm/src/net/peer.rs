//! Host-side UDP peers for the guest's network workloads, on plain `std::net` sockets (make
//! them inside HostA with [`super::lab::Lab::udp_socket`]): send a stream of datagrams
//! (`net-rx` receives it), receive and check one (`net-tx` sends it), and a
//! request/response client (against `net-echo`'s UDP echo port). The datagram format and
//! the checks are `tinyvmm_abi::net`'s, the same code the guest runs.
//!
//! Also [`GuestConsole`]: the guest's console lines from tinyvmm's stdout, to wait for
//! [`NET_READY_LINE`] before sending.

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::abi::net::{fill_datagram, StreamCheck, DATAGRAM_HEADER, DATAGRAM_MAX, NET_READY_LINE};

/// What [`send_stream`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SendReport {
    pub datagrams: u64,
    /// UDP payload bytes.
    pub bytes: u64,
    /// From the first send to the last.
    pub elapsed: Duration,
}

/// Sends `count` datagrams of `size` bytes (sequence numbers 0..count) to `to`, at most
/// `rate` datagrams per second if given (paced against the start time, so the average
/// holds even if one send is late). A full socket buffer (`ENOBUFS`) is retried, not lost.
pub fn send_stream(sock: &UdpSocket, to: SocketAddr, count: u64, size: usize, rate: Option<f64>) -> std::io::Result<SendReport> {
    if !(DATAGRAM_HEADER..=DATAGRAM_MAX).contains(&size) {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            format!("datagram size {size}: give {DATAGRAM_HEADER} to {DATAGRAM_MAX} bytes"),
        ));
    }
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let mut r = SendReport::default();
    for seq in 0..count {
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            let due = start + Duration::from_secs_f64(seq as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        fill_datagram(&mut buf, seq as u32);
        loop {
            match sock.send_to(&buf, to) {
                Ok(_) => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::EAGAIN)) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => return Err(e),
            }
        }
        r.datagrams += 1;
        r.bytes += size as u64;
    }
    r.elapsed = start.elapsed();
    Ok(r)
}

/// What [`receive_stream`] received.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReceiveReport {
    /// Datagrams, bytes, bad sequence numbers, bad checksums (the guest's own counting).
    pub check: StreamCheck,
    /// It stopped because nothing came for the idle timeout, before `count` datagrams.
    pub timed_out: bool,
    /// From the first datagram to the last.
    pub elapsed: Duration,
}

/// Receives until `count` datagrams came or none came for `idle`, checking each.
pub fn receive_stream(sock: &UdpSocket, count: u64, idle: Duration) -> std::io::Result<ReceiveReport> {
    sock.set_read_timeout(Some(idle.max(Duration::from_millis(1))))?;
    let mut buf = vec![0u8; 65536];
    let mut r = ReceiveReport::default();
    let mut first = None;
    while r.check.datagrams < count {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let now = Instant::now();
                let t0 = *first.get_or_insert(now);
                r.elapsed = now - t0;
                r.check.add(&buf[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                r.timed_out = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(r)
}

/// What [`request_response`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RrReport {
    /// Requests answered with an identical datagram.
    pub transactions: u64,
    /// Requests with no answer within the reply timeout.
    pub timeouts: u64,
    /// Answers that were not the request sent (late answers to timed-out requests are
    /// skipped, not counted here).
    pub bad_replies: u64,
    pub elapsed: Duration,
}

impl RrReport {
    /// Transactions per second.
    pub fn per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.transactions as f64 / s
        } else {
            0.0
        }
    }
}

/// One request of `size` bytes at a time to an echo server at `to`, the next when its
/// answer came (netperf's UDP_RR), for `duration` or `max_transactions`, whichever ends
/// first.
pub fn request_response(
    sock: &UdpSocket,
    to: SocketAddr,
    size: usize,
    duration: Duration,
    max_transactions: u64,
    reply_timeout: Duration,
) -> std::io::Result<RrReport> {
    let size = size.clamp(DATAGRAM_HEADER, DATAGRAM_MAX);
    sock.set_read_timeout(Some(reply_timeout.max(Duration::from_millis(1))))?;
    let mut req = vec![0u8; size];
    let mut buf = vec![0u8; 65536];
    let mut r = RrReport::default();
    let start = Instant::now();
    let mut seq = 0u32;
    while start.elapsed() < duration && r.transactions < max_transactions {
        fill_datagram(&mut req, seq);
        sock.send_to(&req, to)?;
        let sent = Instant::now();
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if buf[..n] == req[..] => {
                    r.transactions += 1;
                    break;
                }
                Ok((n, _)) => {
                    let late = crate::abi::net::check_datagram(&buf[..n]).is_ok_and(|s| s < seq);
                    if !late {
                        r.bad_replies += 1;
                    }
                    if sent.elapsed() >= reply_timeout {
                        r.timeouts += 1;
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    r.timeouts += 1;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        seq = seq.wrapping_add(1);
    }
    r.elapsed = start.elapsed();
    Ok(r)
}

/// What [`tcp_send`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TcpSendReport {
    pub bytes: u64,
    /// From connecting to the receiver's close (everything acknowledged and read).
    pub elapsed: Duration,
}

/// Connects to `to`, sends `bytes` bytes of the TCP stream pattern
/// (`tinyvmm_abi::net::tcp_stream_byte`), closes its sending side and waits (up to
/// `timeout`) for the receiver to close too: then the guest has read everything.
/// Call it in the sender's namespace (`Lab::run_in`).
pub fn tcp_send(to: SocketAddr, bytes: u64, timeout: Duration) -> std::io::Result<TcpSendReport> {
    use std::io::Write;
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&to, timeout)?;
    s.set_write_timeout(Some(timeout))?;
    s.set_read_timeout(Some(timeout))?;
    let mut chunk = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = crate::abi::net::tcp_stream_byte(sent + k as u64);
        }
        s.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // The guest closes after it has read our FIN (and everything before it).
    let mut rest = [0u8; 64];
    loop {
        match s.read(&mut rest) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(TcpSendReport { bytes: sent, elapsed: start.elapsed() })
}

/// The guest's console, line by line, from tinyvmm's stdout (run it without `--quiet`):
/// a thread reads it so the child never blocks on a full pipe.
pub struct GuestConsole {
    rx: Receiver<String>,
    lines: Vec<String>,
}

impl GuestConsole {
    pub fn new(out: impl Read + Send + 'static) -> GuestConsole {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        GuestConsole { rx, lines: Vec::new() }
    }

    /// Waits until a line starting with `prefix` came (true), or `timeout` passed or the
    /// console ended (false).
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> bool {
        if self.lines.iter().any(|l| l.starts_with(prefix)) {
            return true;
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.starts_with(prefix);
                    self.lines.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Waits for [`NET_READY_LINE`]: the guest's driver and stack are up.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        self.wait_for(NET_READY_LINE, timeout)
    }

    /// Every line read so far (reads what is waiting first, without blocking).
    pub fn lines(&mut self) -> &[String] {
        while let Ok(l) = self.rx.try_recv() {
            self.lines.push(l);
        }
        &self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peers against each other on loopback: a stream arrives whole and checked, a
    /// damaged or reordered one is counted, request/response is answered by an echo thread.
    #[test]
    fn stream_and_request_response_over_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let sent = send_stream(&tx, to, 50, 100, Some(5000.0)).unwrap();
        assert_eq!((sent.datagrams, sent.bytes), (50, 5000));
        let got = receive_stream(&rx, 50, Duration::from_secs(2)).unwrap();
        assert_eq!((got.check.datagrams, got.check.bytes, got.check.bad_seq, got.check.bad_checksum, got.timed_out), (50, 5000, 0, 0, false));
        // A reordered pair and a damaged datagram.
        let mut b = [0u8; 32];
        for seq in [1u32, 0] {
            fill_datagram(&mut b, seq);
            tx.send_to(&b, to).unwrap();
        }
        b[20] ^= 1;
        tx.send_to(&b, to).unwrap();
        let got = receive_stream(&rx, 10, Duration::from_millis(200)).unwrap();
        assert_eq!((got.check.datagrams, got.check.bad_seq, got.check.bad_checksum, got.timed_out), (3, 2, 1, true));
        assert!(send_stream(&tx, to, 1, 15, None).is_err(), "a datagram shorter than its header");

        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let rr = request_response(&tx, echo_addr, 64, Duration::from_secs(5), 100, Duration::from_secs(1)).unwrap();
        assert_eq!((rr.transactions, rr.timeouts, rr.bad_replies), (100, 0, 0));
        assert!(rr.per_second() > 0.0);
    }
}
