//! One file per group of routes; each handler reads its request, asks the parts of the server it
//! needs, and answers. The route table is `http::router`.
pub mod evaluate;
pub mod events;
pub mod health;
pub mod models;
pub mod recommend;
pub mod v2_infer;
