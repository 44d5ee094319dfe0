//! A link's delay for benchmarks in network namespaces, where the kernel has no `netem`: packets
//! that iptables sends to NFQUEUE `QUEUE` are held `MS` milliseconds each, in order, then let
//! through. Loss comes from iptables' `statistic` match and rate from `tbf`, both in the kernel.
//!
//!     iptables -A OUTPUT -j NFQUEUE --queue-num 0; link-delay 0 25
//!
//! Runs until killed; a packet it cannot hold (the queue full) is let through by the kernel.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(queue_num), Some(ms)) =
        (args.get(1).and_then(|a| a.parse::<u16>().ok()), args.get(2).and_then(|a| a.parse::<u64>().ok()))
    else {
        eprintln!("usage: link-delay QUEUE MS");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(ms);
    let mut queue = nfq::Queue::open().expect("open an NFQUEUE socket (root, in the namespace)");
    queue.bind(queue_num).expect("bind the queue");
    queue.set_fail_open(queue_num, true).expect("fail open");
    queue.set_queue_max_len(queue_num, 65536).expect("queue length");
    // Only the verdict matters: no payload comes up.
    queue.set_copy_range(queue_num, 0).expect("copy range");
    queue.set_nonblocking(true);
    println!("ready");
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        let mut got = false;
        while let Ok(mut msg) = queue.recv() {
            msg.set_verdict(nfq::Verdict::Accept);
            held.push_back((Instant::now() + delay, msg));
            got = true;
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, msg) = held.pop_front().expect("a held packet");
            queue.verdict(msg).expect("let a packet through");
        }
        if !got {
            let next = held.front().map_or(Duration::from_micros(200), |(due, _)| due.saturating_duration_since(now));
            std::thread::sleep(next.min(Duration::from_micros(200)));
        }
    }
}
