//! Admin routes (POST /evaluate): see the evaluation issue. Jobs registry lives here.
use super::AppState;
use axum::Router;
use std::sync::Arc;

#[derive(Default)]
pub struct Jobs {}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
