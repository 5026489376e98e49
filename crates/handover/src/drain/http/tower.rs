//! Serving tower services (an `axum::Router`, tonic services) with
//! [`serve`](super::serve) and [`serve_connection_auto`](super::serve_connection_auto)
//! (feature `tower`).

use std::future::{Future, poll_fn};
use std::pin::Pin;

use hyper::Request;
use hyper::body::Incoming;

/// Makes a tower service (an `axum::Router`, a tonic service or
/// `tonic::service::Routes`, anything that implements
/// `tower::Service<http::Request<hyper::body::Incoming>>` and `Clone`) a
/// hyper service for [`serve`](super::serve) and
/// [`serve_connection_auto`](super::serve_connection_auto).
///
/// ```no_run
/// use handover::drain::{Drain, Listener, http::{self, HttpOptions}};
///
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
/// let drain = Drain::new();
/// let listener = Listener::new(tokio::net::TcpListener::bind("127.0.0.1:8080").await?, &drain);
/// http::serve(&listener, http::tower(app), &HttpOptions::default()).await?;
/// # Ok(()) }
/// ```
///
/// Each request is served by a clone of `service`, made ready
/// (`poll_ready`) and then called, as hyper-util's `TowerToHyperService`
/// does.
pub fn tower<S>(service: S) -> TowerService<S> {
    TowerService { inner: service }
}

/// A tower service made a hyper service: see [`tower()`].
#[derive(Debug, Clone)]
pub struct TowerService<S> {
    inner: S,
}

impl<S> TowerService<S> {
    /// The tower service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for TowerService<S>
where
    S: tower_service::Service<Request<Incoming>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut service = self.inner.clone();
        Box::pin(async move {
            poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(req).await
        })
    }
}
