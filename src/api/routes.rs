//! The API's route table and the layers every request passes (token gate, time limit,
//! one log line). The handlers are by resource: gateways.rs, destinations.rs,
//! dest_certs.rs, rules.rs, clients.rs; each authorizes, reads the body (body.rs), then
//! reads the running gateway or makes one [`Api::change`].

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::body::too_large;
use super::error::Logged;
use super::{clients, dest_certs, destinations, gateways, rules};
use super::{Api, ApiError, Backend};

/// The route table, written once: `ROUTES` (what docs/openapi.json documents, tested) and
/// the router are both made from it.
macro_rules! routes {
    ($($method:ident $path:literal => $module:ident::$handler:ident;)*) => {
        /// Every route: (method, path). docs/openapi.json documents exactly these (tested).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn with_routes<B: Backend>(r: Router<Arc<Api<B>>>) -> Router<Arc<Api<B>>> {
            // Routes on one path merge into one method router.
            r$(.route($path, on!($method)($module::$handler::<B>)))*
        }
    };
}

/// The axum constructor for a method name.
macro_rules! on {
    (GET) => {
        axum::routing::get
    };
    (POST) => {
        axum::routing::post
    };
    (PUT) => {
        axum::routing::put
    };
    (DELETE) => {
        axum::routing::delete
    };
}

routes! {
    GET "/v1/sgconfig" => gateways::list_gateways;
    POST "/v1/sgconfig" => gateways::create_gateway;
    PUT "/v1/setActivity" => gateways::gateways_activity;
    GET "/v1/export" => gateways::export_all;
    PUT "/v1/import" => gateways::import_all;
    GET "/v1/stats" => gateways::stats_all;
    GET "/v1/sgconfig/{gateway_id}" => gateways::get_gateway;
    PUT "/v1/sgconfig/{gateway_id}" => gateways::update_gateway;
    DELETE "/v1/sgconfig/{gateway_id}" => gateways::delete_gateway;
    GET "/v1/sgconfig/{gateway_id}/export" => gateways::export_gateway;
    PUT "/v1/sgconfig/{gateway_id}/setActivity" => gateways::dests_activity;
    GET "/v1/sgconfig/{gateway_id}/stats" => gateways::gateway_stats;
    GET "/v1/sgconfig/{gateway_id}/enrollment" => gateways::gateway_enrollment;
    GET "/v1/sgconfig/{gateway_id}/destinations" => destinations::list_dests;
    POST "/v1/sgconfig/{gateway_id}/destinations" => destinations::create_dest;
    DELETE "/v1/sgconfig/{gateway_id}/bulkDestinations" => destinations::bulk_delete;
    PUT "/v1/sgconfig/{gateway_id}/destinations/import" => destinations::import_dests;
    GET "/v1/sgconfig/{gateway_id}/destinations/{destination_id}" => destinations::get_dest;
    PUT "/v1/sgconfig/{gateway_id}/destinations/{destination_id}" => destinations::update_dest;
    DELETE "/v1/sgconfig/{gateway_id}/destinations/{destination_id}" => destinations::delete_dest;
    GET "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/export" => destinations::export_dest;
    GET "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/cert" => dest_certs::get_cert;
    PUT "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/cert" => dest_certs::put_cert;
    DELETE "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/cert" => dest_certs::delete_cert;
    PUT "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/genCerts" => dest_certs::gen_certs;
    PUT "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/ipTableRule" => rules::put_rule;
    DELETE "/v1/sgconfig/{gateway_id}/destinations/{destination_id}/ipTableRule" => rules::delete_rule;
    GET "/v1/sgconfig/{gateway_id}/clients" => clients::list_clients;
    DELETE "/v1/sgconfig/{gateway_id}/clients" => clients::delete_clients;
    GET "/v1/sgconfig/{gateway_id}/clients/{client_id}" => clients::get_client;
    GET "/v1/sgconfig/{gateway_id}/clientLogs" => clients::client_logs;
    GET "/v1/sgconfig/{gateway_id}/disconnectedClients" => clients::disconnected;
}

pub(super) fn router<B: Backend>(api: Arc<Api<B>>) -> Router {
    let max_body = usize::try_from(api.settings.max_body).unwrap_or(usize::MAX);
    with_routes(Router::new())
        .fallback(|| async { ApiError::not_found("no such API call") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed for this path",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(api.clone(), gate::<B>))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(api)
}

/// Runs before any handler reads a body: a request without a known token is refused from its
/// headers, and every request, body included, must finish within `api_request_timeout`.
async fn gate<B: Backend>(
    State(api): State<Arc<Api<B>>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = api.known_token(req.headers()) {
        return e.into_response();
    }
    // A body announced too large is refused before it is polled, so no `100 Continue` invites
    // the client to send what would be thrown away (and cut off mid-send).
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > api.settings.max_body) {
        return too_large().into_response();
    }
    let limit = api.settings.request_timeout;
    let timed_out = || {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not completed within {} s (api_request_timeout)",
                limit.as_secs()
            ),
        )
        .into_response()
    };
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return tokio::time::timeout(limit, next.run(req))
            .await
            .unwrap_or_else(|_| timed_out());
    }
    // A change is applied to the running gateway and then committed to the store, with
    // awaits between: cut off there (the caller hung up, or a timeout), it would leave
    // listeners taken out and the store behind, and a 408 would hide a change that was made
    // (a regenerated token never shown). So what the caller controls, sending the body, has
    // the timeout; the change then runs to its end on a task of its own, bounded by the
    // store's and the listeners' own deadlines, and its answer is the real one.
    let (parts, body) = req.into_parts();
    let ready = tokio::time::timeout(limit, async {
        let body = match axum::body::to_bytes(body, api.settings.max_body as usize).await {
            Ok(b) => b,
            Err(e) => {
                let over = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return Err(if over {
                    too_large()
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "cannot read the request body")
                });
            }
        };
        match api.changing.clone().acquire_owned().await {
            Ok(permit) => Ok((body, permit)),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the API is shutting down",
            )),
        }
    })
    .await;
    let (body, permit) = match ready {
        Err(_) => return timed_out(),
        Ok(Err(e)) => return e.into_response(),
        Ok(Ok(ready)) => ready,
    };
    let req = Request::from_parts(parts, axum::body::Body::from(body));
    let task = tokio::spawn(async move {
        let r = next.run(req).await;
        drop(permit);
        r
    });
    match task.await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the change failed unexpectedly",
        )
        .into_response(),
    }
}

/// One line per request: method, path (never the query or body: tokens and keys), status,
/// and for errors the message.
async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    // The path and the error's words can quote the caller: escaped and cut short.
    let (method, path) = (
        req.method().clone(),
        crate::telemetry::clean(req.uri().path(), 256),
    );
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    match resp
        .extensions()
        .get::<Logged>()
        .map(|Logged(m)| crate::telemetry::clean(m, 512))
    {
        Some(m) if status >= 500 => {
            tracing::warn!(api.method = %method, api.path = %path, api.status = status, duration_ms = ms, reason = %m, "API request failed")
        }
        Some(m) => {
            tracing::info!(api.method = %method, api.path = %path, api.status = status, duration_ms = ms, reason = %m, "API request refused")
        }
        None => {
            tracing::info!(api.method = %method, api.path = %path, api.status = status, duration_ms = ms, "API request")
        }
    }
    resp
}
