//! The host-side peer of the guest's network workloads (`vmm::net::peer`) from a shell; run
//! it inside HostA (`ip netns exec HOSTA ...`):
//!
//! ```text
//! net_peer send ADDR:PORT COUNT SIZE [RATE]   stream datagrams (for net-rx), RATE per second
//! net_peer recv ADDR:PORT COUNT [IDLE_S]      receive and check a stream (from net-tx)
//! net_peer rr ADDR:PORT SIZE SECONDS          UDP request/response (against net-echo, port 7)
//! ```
//!
//! Prints one line of counts; exits 1 if a received stream was short or damaged.
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use vmm::net::peer;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    let s = args.get(i).ok_or_else(|| format!("missing {what}"))?;
    s.parse().map_err(|_| format!("{s:?} is not a valid {what}"))
}

fn run(args: &[String]) -> Result<i32, String> {
    let cmd = args.first().map(String::as_str).unwrap_or("");
    let addr: SocketAddr = arg(args, 1, "ADDR:PORT")?;
    let io = |e: std::io::Error| e.to_string();
    match cmd {
        "send" => {
            let (count, size) = (arg(args, 2, "COUNT")?, arg(args, 3, "SIZE")?);
            let rate: Option<f64> = if args.len() > 4 { Some(arg(args, 4, "RATE")?) } else { None };
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
            let r = peer::send_stream(&sock, addr, count, size, rate).map_err(io)?;
            println!("sent {} datagrams, {} bytes in {:.3} s", r.datagrams, r.bytes, r.elapsed.as_secs_f64());
            Ok(0)
        }
        "recv" => {
            let count = arg(args, 2, "COUNT")?;
            let idle: f64 = if args.len() > 3 { arg(args, 3, "IDLE_S")? } else { 10.0 };
            let sock = UdpSocket::bind(addr).map_err(io)?;
            let r = peer::receive_stream(&sock, count, Duration::from_secs_f64(idle)).map_err(io)?;
            let c = r.check;
            let secs = r.elapsed.as_secs_f64();
            println!(
                "received {} datagrams, {} bytes, bad_seq {}, bad_checksum {}, timed_out {}, {:.0} datagrams/s",
                c.datagrams,
                c.bytes,
                c.bad_seq,
                c.bad_checksum,
                r.timed_out,
                if secs > 0.0 { c.datagrams as f64 / secs } else { 0.0 }
            );
            Ok(i32::from(r.timed_out || c.bad_seq > 0 || c.bad_checksum > 0))
        }
        "rr" => {
            let (size, secs): (usize, f64) = (arg(args, 2, "SIZE")?, arg(args, 3, "SECONDS")?);
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
            let r = peer::request_response(&sock, addr, size, Duration::from_secs_f64(secs), u64::MAX, Duration::from_secs(1)).map_err(io)?;
            println!("{} transactions, {:.0}/s, {} timeouts, {} bad replies", r.transactions, r.per_second(), r.timeouts, r.bad_replies);
            Ok(i32::from(r.timeouts > 0 || r.bad_replies > 0))
        }
        _ => Err("give send, recv or rr (see the file's docs)".into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("net_peer: {e} (usage: net_peer send ADDR:PORT COUNT SIZE [RATE] | recv ADDR:PORT COUNT [IDLE_S] | rr ADDR:PORT SIZE SECONDS)");
            std::process::exit(1);
        }
    }
}
