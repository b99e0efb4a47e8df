//! loadgen: the SIP side of the pua-rs benchmark (bench/run.py), std only.
//!
//! Two subcommands, each one process:
//!
//! `loadgen uas [--bind 127.0.0.1:0] [--max-seconds 1200]`
//!     The PUBLISH answerer (the "presence server" of the benchmark).  Binds
//!     a UDP socket, prints `PORT <n>`, answers every PUBLISH with
//!     `200 OK` + `SIP-ETag` + `Expires` (the request's value, 3600 if it
//!     had none) at once, and any other request but ACK with a plain 200.
//!     Reads commands from stdin: `stats` prints one `STATS {json}` line;
//!     `quit` or EOF prints `FINAL {json}` and exits.  Exits on its own
//!     after --max-seconds.  --dump PATH writes the first 3 initial and the
//!     first 3 refresh PUBLISHes (as received) to PATH.
//!
//! `loadgen phones --target 127.0.0.1:PORT --users N --rate R
//!                 (--duration S | --count C) [--drain S] [--expires E]
//!                 [--domain D] [--warmup W [--warmup-rate R2]]`
//!     The phones: one UDP socket, one thread sending REGISTERs for users
//!     u0..u(N-1) in a loop (user = seq % N) at a fixed rate (token bucket,
//!     0.5 ms ticks), one thread receiving the replies.  Each user has its
//!     own Call-ID, From tag and Contact; CSeq is the global sequence number
//!     + 1, so it grows for every user (the registrar then sees refreshes of
//!     one contact: usrloc UPDATE, pua_usrloc's refresh PUBLISH).  Prints
//!     `START`, `SENDING_DONE <seconds> <sent>`, then after the drain (all
//!     answered or --drain seconds) `RESULT {json}` with the counts: sent,
//!     ok (200), non200 by code, timeouts (no final reply by the end of the
//!     drain), duplicates, latency percentiles.
//!     --warmup W: first W REGISTERs (one pass over the users when W = N)
//!     at --warmup-rate (default --rate), waiting until they are answered
//!     (or --drain s), then `WARMED {json}` with their counts; then one line
//!     on stdin (`go`) starts the measured load, whose sequence numbers
//!     (branch, CSeq) continue after the warm-up's, so every user's contact
//!     is refreshed (usrloc UPDATE, pua_usrloc's refresh PUBLISH) rather
//!     than created.  `RESULT` counts the measured REGISTERs only.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2)
}

struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            if a == name {
                return Some(it.next().unwrap_or_else(|| die(&format!("{name} needs a value"))));
            }
        }
        None
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> T {
        match self.get(name) {
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("bad value for {name}: {v}"))),
            None => default.unwrap_or_else(|| die(&format!("{name} is required"))),
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        die("usage: loadgen uas|phones [options] (see the source header)")
    };
    let args = Args(argv[1..].to_vec());
    match cmd.as_str() {
        "uas" => uas(&args),
        "phones" => phones(&args),
        _ => die(&format!("unknown subcommand {cmd}")),
    }
}

// ---------------------------------------------------------------- parsing

/// Header lines of a SIP message (the lines between the start line and the
/// empty line) and the body.
fn split_msg(buf: &[u8]) -> Option<(&str, Vec<&str>, &[u8])> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    Some((first, lines.collect(), body))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Name and value of a header line (no folding: Kamailio does not fold).
fn hdr(line: &str) -> Option<(&str, &str)> {
    let (n, v) = line.split_once(':')?;
    Some((n.trim(), v.trim()))
}

fn is_name(n: &str, full: &str, compact: Option<&str>) -> bool {
    n.eq_ignore_ascii_case(full) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c))
}

fn branch_of(via: &str) -> Option<&str> {
    via.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("branch").then(|| v.trim())
    })
}

fn now_unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

// ---------------------------------------------------------------- UAS

#[derive(Default)]
struct UasStats {
    publish_rx: u64,
    publish_unique: u64,
    retransmissions: u64,
    initial: u64,
    refresh: u64,
    with_body: u64,
    expires0: u64,
    other_requests: u64,
    replies_rx: u64,
    parse_errors: u64,
    send_errors: u64,
    distinct_initial_uris: u64,
    last_publish_ms: u128,
}

impl UasStats {
    fn json(&self, started: Instant) -> String {
        format!(
            "{{\"publish_rx\": {}, \"publish_unique\": {}, \"retransmissions\": {}, \
             \"initial\": {}, \"refresh\": {}, \"with_body\": {}, \"expires0\": {}, \
             \"other_requests\": {}, \"replies_rx\": {}, \"parse_errors\": {}, \
             \"send_errors\": {}, \"distinct_initial_uris\": {}, \"last_publish_unix_ms\": {}, \
             \"now_unix_ms\": {}, \"uptime_s\": {:.3}}}",
            self.publish_rx,
            self.publish_unique,
            self.retransmissions,
            self.initial,
            self.refresh,
            self.with_body,
            self.expires0,
            self.other_requests,
            self.replies_rx,
            self.parse_errors,
            self.send_errors,
            self.distinct_initial_uris,
            self.last_publish_ms,
            now_unix_ms(),
            started.elapsed().as_secs_f64()
        )
    }
}

fn uas(args: &Args) {
    let bind = args.get("--bind").unwrap_or("127.0.0.1:0");
    let max_s: u64 = args.num("--max-seconds", Some(1200));
    let dump = args.get("--dump").map(|p| p.to_string());
    let sock = UdpSocket::bind(bind).unwrap_or_else(|e| die(&format!("bind {bind}: {e}")));
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = sock.local_addr().unwrap().port();
    println!("PORT {port}");
    std::io::stdout().flush().unwrap();

    let started = Instant::now();
    let stats = Arc::new(Mutex::new(UasStats::default()));
    let stop = Arc::new(AtomicBool::new(false));

    let worker = {
        let stats = stats.clone();
        let stop = stop.clone();
        thread::spawn(move || uas_loop(sock, &stats, &stop, dump))
    };

    // stdin commands; a watchdog thread ends the process after max_s.
    {
        let stop = stop.clone();
        thread::spawn(move || {
            let deadline = started + Duration::from_secs(max_s);
            while Instant::now() < deadline {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                thread::sleep(Duration::from_millis(200));
            }
            eprintln!("loadgen uas: --max-seconds {max_s} reached, exiting");
            std::process::exit(3);
        });
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "stats" => {
                let s = stats.lock().unwrap().json(started);
                println!("STATS {s}");
                std::io::stdout().flush().unwrap();
            }
            "quit" => break,
            "" => {}
            other => eprintln!("loadgen uas: unknown command {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let s = stats.lock().unwrap().json(started);
    println!("FINAL {s}");
    std::io::stdout().flush().unwrap();
}

fn uas_loop(sock: UdpSocket, stats: &Mutex<UasStats>, stop: &AtomicBool, dump: Option<String>) {
    let mut dump_f = dump.map(|p| std::fs::File::create(&p).unwrap_or_else(|e| die(&format!("--dump {p}: {e}"))));
    let (mut dumped_init, mut dumped_refresh) = (0, 0);
    let mut buf = vec![0u8; 65536];
    let mut branches: HashSet<String> = HashSet::new();
    let mut uris: HashSet<String> = HashSet::new();
    let mut etag: u64 = 0;
    let mut out = String::with_capacity(2048);
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => die(&format!("uas recv: {e}")),
        };
        let msg = &buf[..n];
        let Some((first, lines, body)) = split_msg(msg) else {
            stats.lock().unwrap().parse_errors += 1;
            continue;
        };
        if first.starts_with("SIP/2.0 ") {
            stats.lock().unwrap().replies_rx += 1;
            continue;
        }
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("");
        let ruri = parts.next().unwrap_or("");
        if method == "ACK" {
            continue;
        }
        let mut vias = Vec::new();
        let (mut from_h, mut to_h, mut callid, mut cseq) = (None, None, None, None);
        let mut expires: Option<&str> = None;
        let mut if_match = false;
        for l in &lines {
            let Some((n, v)) = hdr(l) else { continue };
            if is_name(n, "Via", Some("v")) {
                vias.push(v);
            } else if is_name(n, "From", Some("f")) {
                from_h = Some(v);
            } else if is_name(n, "To", Some("t")) {
                to_h = Some(v);
            } else if is_name(n, "Call-ID", Some("i")) {
                callid = Some(v);
            } else if is_name(n, "CSeq", None) {
                cseq = Some(v);
            } else if is_name(n, "Expires", None) {
                expires = Some(v);
            } else if is_name(n, "SIP-If-Match", None) {
                if_match = true;
            }
        }
        let (Some(from_h), Some(to_h), Some(callid), Some(cseq)) = (from_h, to_h, callid, cseq) else {
            stats.lock().unwrap().parse_errors += 1;
            continue;
        };
        if vias.is_empty() {
            stats.lock().unwrap().parse_errors += 1;
            continue;
        }
        let is_publish = method == "PUBLISH";
        let exp_val = expires.and_then(|e| e.parse::<u64>().ok()).unwrap_or(3600);
        out.clear();
        out.push_str("SIP/2.0 200 OK\r\n");
        for v in &vias {
            out.push_str("Via: ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str("From: ");
        out.push_str(from_h);
        out.push_str("\r\nTo: ");
        out.push_str(to_h);
        if !to_h.contains(";tag=") {
            out.push_str(";tag=uas");
        }
        out.push_str("\r\nCall-ID: ");
        out.push_str(callid);
        out.push_str("\r\nCSeq: ");
        out.push_str(cseq);
        out.push_str("\r\n");
        if is_publish {
            etag += 1;
            out.push_str(&format!("SIP-ETag: lg{etag}\r\nExpires: {exp_val}\r\n"));
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        let sent = sock.send_to(out.as_bytes(), from);
        let mut s = stats.lock().unwrap();
        if sent.is_err() {
            s.send_errors += 1;
        }
        if !is_publish {
            s.other_requests += 1;
            continue;
        }
        s.publish_rx += 1;
        s.last_publish_ms = now_unix_ms();
        let branch = branch_of(vias[0]).unwrap_or("").to_string();
        if !branch.is_empty() && !branches.insert(branch) {
            s.retransmissions += 1;
            continue;
        }
        s.publish_unique += 1;
        if exp_val == 0 {
            s.expires0 += 1;
        }
        if !body.is_empty() {
            s.with_body += 1;
        }
        if let Some(f) = dump_f.as_mut() {
            let n = if if_match { &mut dumped_refresh } else { &mut dumped_init };
            if *n < 3 {
                *n += 1;
                let _ = f.write_all(msg);
                let _ = f.write_all(b"\n----------------\n");
            }
        }
        if if_match {
            s.refresh += 1;
        } else {
            s.initial += 1;
            if uris.insert(ruri.to_string()) {
                s.distinct_initial_uris += 1;
            }
        }
    }
}

// ---------------------------------------------------------------- phones

fn phones(args: &Args) {
    let target: SocketAddr = args
        .get("--target")
        .unwrap_or_else(|| die("--target is required"))
        .parse()
        .unwrap_or_else(|e| die(&format!("--target: {e}")));
    let users: u64 = args.num("--users", None);
    let rate: f64 = args.num("--rate", None);
    let duration: Option<f64> = args.get("--duration").map(|_| args.num("--duration", None));
    let count: Option<u64> = args.get("--count").map(|_| args.num("--count", None));
    let drain: f64 = args.num("--drain", Some(3.0));
    let expires: u64 = args.num("--expires", Some(3600));
    let domain = args.get("--domain").unwrap_or("bench.local").to_string();
    let warmup: u64 = args.num("--warmup", Some(0));
    let warmup_rate: f64 = args.num("--warmup-rate", Some(rate));
    if users == 0 || rate <= 0.0 || warmup_rate <= 0.0 {
        die("--users and --rate must be > 0");
    }
    let total: u64 = match (duration, count) {
        (Some(d), None) => (d * rate).round() as u64,
        (None, Some(c)) => c,
        _ => die("give exactly one of --duration and --count"),
    };
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| die(&format!("bind: {e}")));
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let local = sock.local_addr().unwrap();
    let run_id = (now_unix_ms() % 1_000_000) as u64;

    let t0 = Instant::now();
    let slots = warmup + total;
    let sent_ns: Arc<Vec<AtomicU64>> = Arc::new((0..slots).map(|_| AtomicU64::new(0)).collect());
    let status: Arc<Vec<AtomicU32>> = Arc::new((0..slots).map(|_| AtomicU32::new(0)).collect());
    let lat_us: Arc<Vec<AtomicU32>> = Arc::new((0..slots).map(|_| AtomicU32::new(0)).collect());
    let answered = Arc::new(AtomicU64::new(0));
    let dups = Arc::new(AtomicU64::new(0));
    let foreign = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let rx = {
        let sock = sock.try_clone().unwrap();
        let (sent_ns, status, lat_us, answered, dups, foreign, stop) = (
            sent_ns.clone(),
            status.clone(),
            lat_us.clone(),
            answered.clone(),
            dups.clone(),
            foreign.clone(),
            stop.clone(),
        );
        let prefix = format!("z9hG4bK-lg{run_id}-");
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let n = match sock.recv_from(&mut buf) {
                    Ok((n, _)) => n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                    Err(_) => continue,
                };
                let now = t0.elapsed().as_nanos() as u64;
                let Some((first, lines, _)) = split_msg(&buf[..n]) else {
                    foreign.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let code: u32 = match first.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()) {
                    Some(c) => c,
                    None => {
                        foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if code < 200 {
                    continue;
                }
                let seq = lines
                    .iter()
                    .filter_map(|l| hdr(l))
                    .find(|(n, _)| is_name(n, "Via", Some("v")))
                    .and_then(|(_, v)| branch_of(v))
                    .and_then(|b| b.strip_prefix(prefix.as_str()))
                    .and_then(|s| s.parse::<u64>().ok());
                let Some(seq) = seq.filter(|s| (*s as usize) < status.len()) else {
                    foreign.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let i = seq as usize;
                if status[i].compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    dups.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let s = sent_ns[i].load(Ordering::Acquire);
                lat_us[i].store(((now.saturating_sub(s)) / 1000).min(u32::MAX as u64) as u32, Ordering::Relaxed);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut msg = String::with_capacity(1024);
    let mut send_errors: u64 = 0;
    // Sends REGISTERs `from..to` (sequence numbers) at `rate` per second.
    let mut send_range = |from: u64, to: u64, rate: f64| {
        let start = Instant::now();
        let mut sent = from;
        loop {
            let el = start.elapsed().as_secs_f64();
            let due = (from + (el * rate).floor() as u64 + 1).min(to);
            while sent < due {
                let user = sent % users;
                msg.clear();
                msg.push_str(&format!(
                    "REGISTER sip:{target} SIP/2.0\r\n\
                     Via: SIP/2.0/UDP {local};branch=z9hG4bK-lg{run_id}-{sent};rport\r\n\
                     Max-Forwards: 70\r\n\
                     From: <sip:u{user}@{domain}>;tag=ft{user}\r\n\
                     To: <sip:u{user}@{domain}>\r\n\
                     Call-ID: lgreg-{user}-{run_id}@bench\r\n\
                     CSeq: {cseq} REGISTER\r\n\
                     Contact: <sip:u{user}@{local}>;expires={expires}\r\n\
                     Expires: {expires}\r\n\
                     User-Agent: pua-rs-bench-loadgen\r\n\
                     Content-Length: 0\r\n\r\n",
                    cseq = sent + 1
                ));
                sent_ns[sent as usize].store(t0.elapsed().as_nanos() as u64, Ordering::Release);
                if sock.send_to(msg.as_bytes(), target).is_err() {
                    send_errors += 1;
                }
                sent += 1;
            }
            if sent >= to {
                return;
            }
            thread::sleep(Duration::from_micros(500));
        }
    };
    if warmup > 0 {
        send_range(0, warmup, warmup_rate);
        let drain_end = Instant::now() + Duration::from_secs_f64(drain);
        while Instant::now() < drain_end && answered.load(Ordering::Relaxed) < warmup {
            thread::sleep(Duration::from_millis(20));
        }
        let ok = (0..warmup as usize)
            .filter(|&i| status[i].load(Ordering::Relaxed) == 200)
            .count();
        println!(
            "WARMED {{\"sent\": {warmup}, \"ok\": {ok}, \"answered\": {}}}",
            answered.load(Ordering::Relaxed)
        );
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
            die("stdin closed after the warm-up");
        }
    }
    println!("START {}", now_unix_ms());
    std::io::stdout().flush().unwrap();
    let start = Instant::now();
    send_range(warmup, warmup + total, rate);
    let sent = total;
    let send_s = start.elapsed().as_secs_f64();
    println!("SENDING_DONE {send_s:.3} {sent}");
    std::io::stdout().flush().unwrap();

    let drain_end = Instant::now() + Duration::from_secs_f64(drain);
    while Instant::now() < drain_end && answered.load(Ordering::Relaxed) < warmup + sent {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();

    let mut codes: BTreeMap<u32, u64> = BTreeMap::new();
    let mut lats: Vec<u32> = Vec::new();
    let mut timeouts = 0u64;
    for i in warmup as usize..(warmup + sent) as usize {
        let c = status[i].load(Ordering::Relaxed);
        if c == 0 {
            timeouts += 1;
        } else {
            *codes.entry(c).or_default() += 1;
            lats.push(lat_us[i].load(Ordering::Relaxed));
        }
    }
    lats.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lats.is_empty() {
            0
        } else {
            lats[((lats.len() - 1) as f64 * p).round() as usize]
        }
    };
    let ok = codes.get(&200).copied().unwrap_or(0);
    let non200: u64 = codes.iter().filter(|(c, _)| **c != 200).map(|(_, n)| n).sum();
    let codes_json: Vec<String> = codes.iter().map(|(c, n)| format!("\"{c}\": {n}")).collect();
    println!(
        "RESULT {{\"sent\": {sent}, \"send_errors\": {send_errors}, \"send_seconds\": {send_s:.3}, \
         \"ok\": {ok}, \"non200\": {non200}, \"timeouts\": {timeouts}, \"duplicates\": {}, \
         \"foreign\": {}, \"codes\": {{{}}}, \"lat_us_p50\": {}, \"lat_us_p90\": {}, \
         \"lat_us_p99\": {}, \"lat_us_max\": {}, \"users\": {users}, \"rate\": {rate}}}",
        dups.load(Ordering::Relaxed),
        foreign.load(Ordering::Relaxed),
        codes_json.join(", "),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lats.last().copied().unwrap_or(0)
    );
    std::io::stdout().flush().unwrap();
}
