//! The HTTP edge: connections (`listener`) → the route table (`router`) → the layers around every
//! handler (`middleware`) → a handler (`handlers/`), which reads its body (`body`), uses the wire
//! types (`types`) and the shared state (`state`), and turns domain errors into statuses in one
//! place (`error`). `openapi` describes it all.
pub mod body;
pub mod body_budget;
pub mod error;
pub mod handlers;
pub mod listener;
pub mod middleware;
pub mod openapi;
pub mod parse_pool;
pub mod router;
pub mod state;
pub mod throttle;
pub mod types;
