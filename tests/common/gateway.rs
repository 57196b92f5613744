//! A test SMS gateway: an HTTP server in the test process that records every call (its
//! idempotency key, the order and event of its body, when it started and ended, what it
//! answered) and behaves as the test says: answering after a latency, failing some SMS, or
//! hanging until told otherwise. It counts calls in flight itself: it is the independent witness
//! of what paystream did to it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// How the gateway answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// 200 after `latency`.
    Ok { latency: Duration },
    /// After `latency`: 400 for the SMS [`rejects`] picks (every call), 503 for the first call of
    /// those [`fails_once`] picks, 200 otherwise.
    Flaky { latency: Duration },
    /// No answer while the mode stays `Hang` (then 503, to a caller long gone).
    Hang,
}

/// One call.
#[derive(Debug, Clone)]
pub struct Call {
    pub idempotency_key: Option<String>,
    pub order_id: String,
    pub event_id: String,
    pub template: String,
    pub started: Instant,
    pub ended: Instant,
    pub status: u16,
    /// The test's phase when the call started ([`Gateway::set_phase`]).
    pub phase: u32,
}

#[derive(Default)]
struct Inner {
    mode: Mutex<Option<Mode>>,
    calls: Mutex<Vec<Call>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Orders with a call in flight, and calls that found their order already in flight.
    orders_in_flight: Mutex<HashMap<String, usize>>,
    overlapping_orders: AtomicUsize,
    phase: AtomicUsize,
    seen: Mutex<HashMap<String, usize>>,
}

/// The running gateway (stops with the test's runtime).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    pub url: String,
}

/// Whether the SMS with this event id is one the flaky gateway always refuses (about 5%).
pub fn rejects(event_id: &str) -> bool {
    bucket(event_id) < 5
}

/// Whether its first call fails with 503 (about 30%, none of them [`rejects`]).
pub fn fails_once(event_id: &str) -> bool {
    (5..35).contains(&bucket(event_id))
}

fn bucket(event_id: &str) -> u32 {
    // FNV-1a: fixed, independent of paystream's hashing.
    let mut h: u32 = 0x811c_9dc5;
    for b in event_id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % 100
}

impl Gateway {
    pub async fn start(mode: Mode) -> Gateway {
        let inner = Arc::new(Inner::default());
        *inner.mode.lock().expect("mode") = Some(mode);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/send", post(send))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Gateway {
            inner,
            url: format!("http://{addr}/send"),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().expect("mode") = Some(mode);
    }

    pub fn set_phase(&self, phase: u32) {
        self.inner.phase.store(phase as usize, Ordering::SeqCst);
    }

    /// Most calls in flight at once since the last reset.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset_max_in_flight(&self) {
        self.inner.max_in_flight.store(
            self.inner.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// Calls that started while another call of the same order was in flight.
    pub fn overlapping_orders(&self) -> usize {
        self.inner.overlapping_orders.load(Ordering::SeqCst)
    }

    /// Every finished call, in the order they started.
    pub fn calls(&self) -> Vec<Call> {
        let mut calls = self.inner.calls.lock().expect("calls").clone();
        calls.sort_by_key(|c| c.started);
        calls
    }

    /// Event id → number of 2xx answers.
    pub fn delivered(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for c in self.inner.calls.lock().expect("calls").iter() {
            if (200..300).contains(&c.status) {
                *out.entry(c.event_id.clone()).or_insert(0) += 1;
            }
        }
        out
    }
}

/// A call in the gateway: counted in flight until dropped (also when the caller hangs up and the
/// server drops the handler), then recorded (`status` 0 if it never answered).
struct InFlight {
    g: Arc<Inner>,
    call: Call,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self
            .g
            .orders_in_flight
            .lock()
            .expect("orders")
            .get_mut(&self.call.order_id)
        {
            *n -= 1;
        }
        self.g.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.call.ended = Instant::now();
        self.g.calls.lock().expect("calls").push(self.call.clone());
    }
}

async fn send(State(g): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let started = Instant::now();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let order_id = json["order_id"].as_str().unwrap_or("").to_owned();
    let event_id = json["event_id"].as_str().unwrap_or("").to_owned();
    let template = json["template"].as_str().unwrap_or("").to_owned();
    let now = g.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    g.max_in_flight.fetch_max(now, Ordering::SeqCst);
    {
        let mut orders = g.orders_in_flight.lock().expect("orders");
        let n = orders.entry(order_id.clone()).or_insert(0);
        if *n > 0 {
            g.overlapping_orders.fetch_add(1, Ordering::SeqCst);
        }
        *n += 1;
    }
    let nth = {
        let mut seen = g.seen.lock().expect("seen");
        let n = seen.entry(event_id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let mut guard = InFlight {
        g: g.clone(),
        call: Call {
            idempotency_key: headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            order_id,
            event_id: event_id.clone(),
            template,
            started,
            ended: started,
            status: 0,
            phase: g.phase.load(Ordering::SeqCst) as u32,
        },
    };
    let status = loop {
        let mode = g.mode.lock().expect("mode").unwrap_or(Mode::Hang);
        match mode {
            Mode::Ok { latency } => {
                tokio::time::sleep(latency).await;
                break StatusCode::OK;
            }
            Mode::Flaky { latency } => {
                tokio::time::sleep(latency).await;
                break if rejects(&event_id) {
                    StatusCode::BAD_REQUEST
                } else if fails_once(&event_id) && nth == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
            }
            Mode::Hang => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if matches!(*g.mode.lock().expect("mode"), Some(Mode::Hang)) {
                    continue;
                }
                break StatusCode::SERVICE_UNAVAILABLE;
            }
        }
    };
    guard.call.status = status.as_u16();
    status
}
