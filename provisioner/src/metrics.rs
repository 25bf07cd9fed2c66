//! `/metrics` (Prometheus text format) and `/healthz`.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    driver: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    driver: String,
    verb: String,
}

pub struct Metrics {
    registry: Registry,
    provisions: Family<Outcome, Counter>,
    deletes: Family<Outcome, Counter>,
    calls: Family<Call, Histogram>,
    leader: Gauge,
}

fn outcome(driver: &str, ok: bool) -> Outcome {
    Outcome {
        driver: driver.to_string(),
        result: if ok { "success" } else { "failure" }.to_string(),
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flex_provisioner");
        let provisions = Family::<Outcome, Counter>::default();
        let deletes = Family::<Outcome, Counter>::default();
        // 5 ms to about 80 s: a driver call is milliseconds locally, seconds on a cloud API.
        let calls = Family::<Call, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 15,
            ))
        });
        let leader = Gauge::default();
        registry.register(
            "provisions",
            "Driver provision calls, by result",
            provisions.clone(),
        );
        registry.register("deletes", "Driver delete calls, by result", deletes.clone());
        registry.register(
            "call_seconds",
            "Time of each driver call (describe, provision, delete)",
            calls.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and acts",
            leader.clone(),
        );
        Metrics {
            registry,
            provisions,
            deletes,
            calls,
            leader,
        }
    }

    pub fn count_provision(&self, driver: &str, ok: bool) {
        self.provisions.get_or_create(&outcome(driver, ok)).inc();
    }

    pub fn count_delete(&self, driver: &str, ok: bool) {
        self.deletes.get_or_create(&outcome(driver, ok)).inc();
    }

    pub fn observe_call(&self, driver: &str, verb: &str, seconds: f64) {
        let call = Call {
            driver: driver.to_string(),
            verb: verb.to_string(),
        };
        self.calls.get_or_create(&call).observe(seconds);
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(leading as i64);
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves until the process ends. A follower serves too: `/healthz` is its liveness.
pub async fn serve(listen: std::net::SocketAddr, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot serve /metrics on {listen}: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!("serving /metrics and /healthz on {listen}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&request, &metrics)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
